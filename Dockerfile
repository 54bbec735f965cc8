# One image for the whole project: the base image of every KFP component, of the KServe predictor
# and of the Spark driver (client mode inside a component pod). Its reference is set at pipeline
# compile time and, for the predictor, by the kustomize overlays (manifests/overlays/*).
#
#   make image IMAGE=<registry>/propensity:<tag>   (docker build with the git commit as CODE_VERSION)
#   docker run --rm <registry>/propensity:<tag> demo
FROM python:3.11-slim-bookworm

# UV_COMPILE_BYTECODE: precompile at build time, as the predictor runs with a read-only root filesystem.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1

# Java runtime for Spark; libgomp for LightGBM. (Slim images lack the man directories the JRE's postinst links into.)
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless libgomp1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/propensity

# Dependencies first, from the hashed lock file, so this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install uv==0.13.8 \
 && uv pip install --system --require-hashes -r requirements.lock

# The project itself; its dependencies are all in the layer above.
COPY pyproject.toml README.md ./
COPY propensity ./propensity
COPY components ./components
COPY pipelines ./pipelines
COPY feature_repo ./feature_repo
COPY serving ./serving
COPY monitoring ./monitoring
RUN uv pip install --system --no-deps .

# The JVM libraries Spark needs beyond pyspark's (the table format, its catalog and S3 clients),
# pinned in propensity/jvm.lock: downloaded from Maven Central and every checksum verified. Spark
# executor pods start from this image too and find them at the same path.
ENV PROPENSITY_JARS=/opt/propensity/jars
RUN python -m propensity.jvm fetch

# Non-root user (uid/gid 1000, as the manifests' securityContext expects) and its work directory.
RUN groupadd --gid 1000 propensity \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/propensity --shell /usr/sbin/nologin propensity \
 && mkdir -p /var/lib/propensity \
 && chown propensity:propensity /var/lib/propensity

# Spark's Python workers use the interpreter that has the package installed. The code's version
# (the git commit, passed by `make image`) is recorded on every model trained with this image.
ARG CODE_VERSION=unknown
ENV PROPENSITY_HOME=/var/lib/propensity \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PROPENSITY_CODE_VERSION=${CODE_VERSION}

USER 1000:1000
WORKDIR /var/lib/propensity
EXPOSE 8080

ENTRYPOINT ["propensity"]
CMD ["--help"]
