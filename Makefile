# Two entry points: `make demo` (set up, then run the whole loop locally) and `make test`.
# The libraries are compiled to bytecode at install, as the image is: every pipeline step is a new
# Python process, and where PYTHONDONTWRITEBYTECODE is set (CI machines, containers) each would
# otherwise compile Feast, MLflow and Great Expectations from source on every import.
# Setup is idempotent: the venv is rebuilt only when a lock file or pyproject.toml change; the JVM
# libraries (propensity/jvm.lock) are downloaded into a cache and every checksum verified.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast system-test lint security check-prereqs check-system-prereqs lock compile benchmark crds clean image

# The Spark class archive is dumped when missing, also after a JVM or jar change (propensity/spark.py).
setup: $(STAMP)
	@$(BIN)/python -m propensity.spark archive

check-prereqs:
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v[:2] == (3, 11) else "Python 3.11 is required, found %d.%d at $(PYTHON); install it or run make PYTHON=/path/to/python3.11" % v[:2])'
	@command -v java >/dev/null 2>&1 || { echo "Java 17+ is required for Spark and was not found on PATH; install a JRE (e.g. apt-get install openjdk-17-jre-headless)"; exit 1; }
	@v=$$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p'); \
	  [ -n "$$v" ] && [ "$$v" -ge 17 ] || { echo "Java 17+ is required for Spark, found version '$$v'; install a newer JRE"; exit 1; }
	@[ "$$(uname)" != Linux ] || { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q 'libgomp\.so\.1' || { echo "libgomp (GNU OpenMP) is required by LightGBM and was not found; install it (e.g. apt-get install libgomp1)"; exit 1; }

$(STAMP): requirements.lock pyproject.toml propensity/jvm.lock
	@$(MAKE) --no-print-directory check-prereqs
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --quiet --python $(BIN)/python --require-hashes --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m propensity.jvm fetch
	@touch $(STAMP)

demo: setup
	$(BIN)/propensity demo

# One test module per worker (pytest-xdist), a worker per core up to 4, modules in collection order
# (xdist would otherwise start the modules with the most tests first): the whole-loop module, which
# tests/conftest.py puts first, runs on one worker while the rest of the suite runs on the others.
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile --no-loadscope-reorder
test: setup
	$(PYTEST)

# The edit-test cycle: every test not marked slow (no Spark, pipeline run, server or service), in
# about two minutes on 2 cores; `make test` runs them too.
test-fast: setup
	$(PYTEST) -m "not system and not slow"

# The cluster's services (object store, MLflow server on PostgreSQL, Redis, Spark) really started on
# 127.0.0.1 by the tests themselves; the PostgreSQL and Redis programs must be installed.
system-test: setup check-system-prereqs
	$(PYTEST) -m system

check-system-prereqs: setup
	@$(BIN)/python -m tests.services

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The project image; the commit (with "-dirty" for uncommitted changes) is baked in as the code version.
IMAGE ?= propensity:0.1.0
image:
	docker build --build-arg CODE_VERSION=$$(git describe --always --dirty 2>/dev/null || echo unknown) -t $(IMAGE) .

# Supply chain: no secrets in the repository, security lint of the product code, and known
# vulnerabilities in the lock file (fails on any with a fixed release; see docs/reliability.md).
PRODUCT := propensity components pipelines serving monitoring feature_repo
security: setup
	$(BIN)/detect-secrets-hook $$(git ls-files)
	$(BIN)/bandit -q -c pyproject.toml -r $(PRODUCT)
	$(BIN)/python .ci/audit.py $(AUDIT_FLAGS)

compile: setup
	$(BIN)/propensity compile --out compiled

benchmark: setup
	$(BIN)/python benchmarks/run.py

# The pinned KServe and Spark Operator CRD schemas for the manifest tests (needs internet once).
crds: setup
	$(BIN)/python manifests/fetch_crds.py

# Regenerate the locks after editing dependencies in pyproject.toml or ROOTS in propensity/jvm.py.
lock: setup
	$(BIN)/uv pip compile --python-version 3.11 pyproject.toml --extra dev --generate-hashes --no-header -o requirements.lock
	$(BIN)/python -m propensity.jvm lock

clean:
	rm -rf $(VENV) .propensity compiled .cache
