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
    """Where new tables put their files."""
    return (settings.data_root / "warehouse").as_uri()


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
    """Before a first write: the folder of a SQLite catalog (the database creates its file)."""
    path = _sqlite_file(settings)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def python_catalog(settings: Settings) -> SqlCatalog:
    """The same catalog for Python readers (PyIceberg): Arrow scans of a table or of one of its
    snapshots, without a JVM."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(catalog_name(settings), uri=catalog_url(settings), warehouse=warehouse(settings))
