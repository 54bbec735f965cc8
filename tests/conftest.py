"""Shared fixtures: every test gets its own PROPENSITY_HOME; small data keeps `make test` fast."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from propensity.settings import Settings, get_settings
from propensity.spark import spark_session
from tests.services import (
    MlflowServer,
    ObjectStore,
    Postgres,
    Redis,
    SparkCluster,
    mlflow_server,
    postgres_server,
    redis_server,
    seaweedfs,
    spark_standalone,
)

# Quiet, deterministic runs of the real libraries.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

# A pytest-xdist worker (`make test`) runs as `python -c`, so its __main__ has neither a spec nor a
# file. pyspark reads that as its own doctest run and exits the process when an import of
# pyspark.sql.connect (Great Expectations and MLflow try one) finds the Spark Connect extras missing
# (pyspark/sql/connect/utils.py). Give __main__ the file the worker runs: the import then fails with
# the ImportError those libraries expect, as it does outside xdist.
if os.environ.get("PYTEST_XDIST_WORKER") and not hasattr(sys.modules["__main__"], "__file__"):
    import xdist.remote

    sys.modules["__main__"].__file__ = xdist.remote.__file__


# Under CI (CI=true) or with PROPENSITY_REQUIRE_SERVICES=1, a test that would skip (a service, a
# binary or a permission missing) fails instead, with its reason: a missing PostgreSQL must not
# shrink the system test to nothing while CI stays green. The only skips such a run may show are
# these, each with why (matched against the skip's reason). On a user's machine skips stay skips,
# and `-rs` prints each one's reason.
ALLOWED_SKIPS: dict[str, str] = {}
REQUIRE_SERVICES = os.environ.get("CI", "").lower() == "true" or os.environ.get("PROPENSITY_REQUIRE_SERVICES") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        if not any(allowed in reason for allowed in ALLOWED_SKIPS):
            report.outcome = "failed"
            report.longrepr = f"skipped, but CI=true or PROPENSITY_REQUIRE_SERVICES=1 requires it to run: {reason}"


# `make test-fast` (`-m "not slow"`) leaves out the tests marked slow: those that start Spark, a
# pipeline run, a server or a service, or spend many seconds of CPU. A test using one of these
# fixtures is slow without saying so; one that starts Spark in-process without being marked fails
# (`pytest_runtest_setup` below), so the fast selection cannot quietly grow a JVM start.
SLOW_FIXTURES = {"spark", "lake", "spark_cluster", "postgres", "redis_service", "redis_db", "object_store_and_mlflow"}


def is_slow(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in ("slow", "integration", "system")) or bool(
        SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The whole-loop modules first: under `pytest -n 2` (one module per worker, `make test`) one
    worker runs the long demo while the other runs everything else, instead of the demo starting
    last and running alone."""
    for item in items:
        if is_slow(item) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)


def _refuse_spark(builder: SparkSession.Builder) -> SparkSession:
    raise AssertionError("this test starts Spark: mark it @pytest.mark.slow (`make test-fast` leaves those out)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """A test not marked slow (at collection, above) may not start (or reuse) a Spark session, in its
    fixtures or its body."""
    with _spark_refused(item.get_closest_marker("slow") is None):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _spark_refused(item.get_closest_marker("slow") is None):
        yield


@contextlib.contextmanager
def _spark_refused(refuse: bool) -> Iterator[None]:
    if not refuse:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SparkSession.Builder, "getOrCreate", _refuse_spark)
        yield


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    monkeypatch.setenv("PROPENSITY_HOME", str(home))
    # A deploy's smoke latency under a loaded test machine (CI runs two suites on two cores) is not
    # what the tests judge: the default second was once exceeded (1.4 s). The latency test sets its own.
    monkeypatch.setenv("PROPENSITY_DEPLOY_MAX_P95_MS", "60000")
    return get_settings()


@pytest.fixture
def lake(settings: Settings, tmp_path: Path) -> Settings:
    """Settings over a small ingested lake (400 customers, 150 days)."""
    from propensity.lake import ingest
    from propensity.synthetic import generate

    data = generate(customers=400, days=150, seed=11)
    (tmp_path / "input").mkdir()
    data.transactions.to_parquet(tmp_path / "input" / "tx.parquet", index=False)
    data.customers.to_parquet(tmp_path / "input" / "customers.parquet", index=False)
    ingest(settings, tmp_path / "input" / "tx.parquet", tmp_path / "input" / "customers.parquet")
    return settings


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> SparkSession:
    """One local Spark session for the whole run (a JVM start costs seconds); small shuffles."""
    home = tmp_path_factory.mktemp("spark-home")
    return spark_session(get_settings(home=home, spark_shuffle_partitions=2), "propensity-tests")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of this test process's own (initdb, free port), for the session; each
    test takes a database of its own from it."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A Redis server of this test process's own (free port, nothing persisted), for the session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_db(redis_service: Redis) -> Iterator[str]:
    """Feast's connection string for an empty Redis database, emptied again after the test."""
    redis_service.client().flushdb()
    try:
        yield redis_service.connection()
    finally:
        redis_service.client().flushdb()


@pytest.fixture(scope="session")
def object_store_and_mlflow(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres
) -> Iterator[tuple[ObjectStore, MlflowServer]]:
    """System tests: one S3 object store (SeaweedFS) and one MLflow server on PostgreSQL with its
    artifacts there, started once for the session (each test uses its own names)."""
    root = tmp_path_factory.mktemp("services")
    with (
        seaweedfs(root / "weed", buckets=("mlflow", "propensity")) as store,
        mlflow_server(root, store, postgres) as server,
    ):
        yield store, server


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """System tests: a Spark standalone master and one worker, each its own JVM."""
    with spark_standalone(tmp_path_factory.mktemp("spark")) as cluster:
        yield cluster
