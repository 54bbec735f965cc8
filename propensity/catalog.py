"""The Apache Iceberg catalog of the Spark tables, the same for Spark and for Python readers.

A JDBC catalog (docs/decisions.md, Tables): its database is `catalog` in the settings, a SQLAlchemy URL,
SQLite in the work dir by default (the embedded mode installs nothing) and PostgreSQL on a cluster (the
database the MLflow server and the Feast registry already use). Spark reaches it through Iceberg's
`JdbcCatalog` (the JDBC form of the same URL), Python through PyIceberg's `SqlCatalog`. A commit is a
compare-and-swap of a table's metadata pointer in that database, which is what makes concurrent
writers safe on object storage, where nothing can be renamed.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from propensity.errors import PropensityError
from propensity.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog

NAMESPACE = "propensity"
EMBEDDED_CATALOG = "catalog.db"  # the embedded mode's catalog: a SQLite file beside the tables
EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"


def catalog_name(settings: Settings) -> str:
    """Spark's name for the catalog of these settings: `lake_` and a digest of its database and
    warehouse. A Spark session loads a catalog once per name, and one session serves every settings
    object of its process (tests, the demo), so each catalog gets a name of its own."""
    digest = hashlib.sha256(f"{catalog_url(settings)}|{warehouse(settings)}".encode()).hexdigest()[:10]
    return f"lake_{digest}"


def table_name(settings: Settings, name: str) -> str:
    """A table's name in Spark SQL: catalog.propensity.name."""
    return f"{catalog_name(settings)}.{NAMESPACE}.{name}"


def catalog_url(settings: Settings) -> str:
    """The catalog database as a SQLAlchemy URL."""
    if settings.catalog is not None:
        return settings.catalog.get_secret_value()
    return f"sqlite:///{settings.data_root / EMBEDDED_CATALOG}"


def warehouse(settings: Settings) -> str:
    """Where new tables put their files: `warehouse` under the tables' root, a folder or an S3 prefix."""
    if settings.tables_on_object_store:
        return f"{settings.tables}/warehouse"
    return (settings.data_root / "warehouse").as_uri()


def object_store_properties(settings: Settings) -> dict[str, str]:
    """The catalog's file IO for tables on an S3-compatible store, as Iceberg (Java's S3FileIO) and
    PyIceberg (Arrow's S3 client) both read them; none for tables on a file system. Credentials come
    from the AWS_* variables (the Secret on a cluster) and travel with the tables Spark sends its
    executors; without them the AWS SDKs' own chains apply (instance or pod identity)."""
    if not settings.tables_on_object_store:
        return {}
    properties = {
        "io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
        "http-client.type": "urlconnection",  # the one HTTP client the jar lock carries
    }
    region = settings.s3_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if settings.s3_endpoint_url:
        properties["s3.endpoint"] = settings.s3_endpoint_url
        properties["s3.path-style-access"] = "true"  # bucket in the path: no DNS name per bucket
        properties["s3.force-virtual-addressing"] = "false"
        region = region or "us-east-1"  # S3-compatible stores take any region; the SDKs need one
    if region:
        properties["client.region"] = region
    for variable, key in (
        ("AWS_ACCESS_KEY_ID", "s3.access-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
        ("AWS_SESSION_TOKEN", "s3.session-token"),
    ):
        if os.environ.get(variable):
            properties[key] = os.environ[variable]
    return properties


def jdbc(url: str) -> tuple[str, dict[str, str]]:
    """The JDBC URL of a SQLAlchemy one, and the user and password as catalog properties."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "sqlite":
        path = url.split("://", 1)[1].removeprefix("/")  # the slash that ends the (empty) authority
        if not path or path == ":memory:":
            raise PropensityError(f"the Iceberg catalog needs a SQLite file, not {url!r}")
        return f"jdbc:sqlite:{Path(path).resolve()}", {}
    if scheme in ("postgresql", "postgres"):
        host = parts.hostname or "localhost"
        address = f"{host}:{parts.port}" if parts.port else host
        credentials = {}
        if parts.username:
            credentials["jdbc.user"] = unquote(parts.username)
        if parts.password:
            credentials["jdbc.password"] = unquote(parts.password)
        query = f"?{parts.query}" if parts.query else ""
        return f"jdbc:postgresql://{address}{parts.path}{query}", credentials
    raise PropensityError(f"the Iceberg catalog must be a sqlite:/// or postgresql:// URL, not {scheme}://")


def spark_catalog_conf(settings: Settings) -> dict[str, str]:
    """Spark's configuration of the catalog of these settings (runtime settings: a running session
    takes them at any time and loads the catalog when a query first names it)."""
    uri, credentials = jdbc(catalog_url(settings))
    prefix = f"spark.sql.catalog.{catalog_name(settings)}"
    conf = {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": uri,
        # The schema PyIceberg's SQL catalog reads and writes too (it has the iceberg_type column).
        f"{prefix}.jdbc.schema-version": "V1",
        f"{prefix}.warehouse": warehouse(settings),
        # Every query sees the newest commit, also one another process made: no cached table
        # (Iceberg's default keeps a loaded table for 30 seconds in a long-lived session).
        f"{prefix}.cache-enabled": "false",
    }
    conf.update({f"{prefix}.{key}": value for key, value in credentials.items()})
    conf.update({f"{prefix}.{key}": value for key, value in object_store_properties(settings).items()})
    return conf


def _sqlite_file(settings: Settings) -> Path | None:
    url = catalog_url(settings)
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def catalog_exists(settings: Settings) -> bool:
    """False for a SQLite catalog whose file is not there yet (no table was ever written): readers
    then see no table, without creating the file."""
    path = _sqlite_file(settings)
    return path is None or path.is_file()


def prepare_catalog(settings: Settings) -> None:
    """Before a write: the folder of a SQLite catalog (the database creates its file), or a
    connection to the catalog's database server; tables on an object store are checked to be
    writable. A database not there, or a wrong endpoint, bucket or key, is one line naming it
    before Spark starts writing."""
    path = _sqlite_file(settings)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        python_catalog(settings)  # a catalog database we cannot reach is one line naming it
    if settings.tables_on_object_store:
        check_object_store(settings)


def check_object_store(settings: Settings) -> None:
    """Write and delete an empty object under the warehouse with the catalog's own file IO."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    io = PyArrowFileIO(object_store_properties(settings))
    probe = f"{warehouse(settings)}/.write-check-{uuid.uuid4().hex}"
    try:
        with io.new_output(probe).create(overwrite=True) as output:
            output.write(b"")
        io.delete(probe)
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]
        store = settings.s3_endpoint_url or "AWS S3"
        raise PropensityError(f"cannot write the tables at {warehouse(settings)} ({store}): {reason}") from error


def python_catalog(settings: Settings) -> SqlCatalog:
    """The same catalog for Python readers (PyIceberg): Arrow scans of a table or of one of its
    snapshots, without a JVM."""
    from pyiceberg.catalog.sql import SqlCatalog
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    try:
        return SqlCatalog(
            catalog_name(settings),
            uri=catalog_url(settings),
            warehouse=warehouse(settings),
            **object_store_properties(settings),
        )
    except DBAPIError as error:  # connecting: the database is not there, or refuses us
        where = make_url(catalog_url(settings)).render_as_string(hide_password=True)
        reason = " ".join(str(error.orig).split())[:300]
        raise PropensityError(f"cannot reach the Iceberg catalog at {where}: {reason}") from None
