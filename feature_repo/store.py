"""Open the Feast store described by the settings (SQLite locally, Redis on the cluster)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from feast import FeatureStore, RepoConfig
from feast.infra.registry.sql import SqlRegistryConfig
from feast.repo_config import RegistryConfig

from feature_repo.definitions import FeatureRepo, Sources, build_repo
from propensity.catalog import table_name
from propensity.errors import PropensityError
from propensity.feature_table import FEATURE_SNAPSHOTS
from propensity.lake import CUSTOMERS
from propensity.settings import Settings
from propensity.tables import LATEST_SCORES, load_table, snapshot_table_name


def registry_config(settings: Settings) -> RegistryConfig:
    """A file in the work dir locally; on a cluster a SQL database every pod shares."""
    if settings.feast_registry:
        return SqlRegistryConfig(
            path=settings.feast_registry.get_secret_value(),
            cache_ttl_seconds=60,
            sqlalchemy_config_kwargs={"echo": False, "pool_pre_ping": True},
        )
    return RegistryConfig(path=str(settings.feature_store_dir / "registry.db"), cache_ttl_seconds=60)


def repo_config(settings: Settings) -> RepoConfig:
    root = settings.feature_store_dir
    online: dict[str, object]
    if settings.online_store == "redis":
        connection = settings.redis_connection
        if settings.redis_password is not None:
            connection += f",password={settings.redis_password.get_secret_value()}"
        online = {"type": "redis", "connection_string": connection}
    else:
        online = {"type": "sqlite", "path": str(root / "online_store.db")}
    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=registry_config(settings),
        online_store=online,
        # Point-in-time joins in the process's Spark session (propensity.spark), which knows the catalog.
        offline_store={"type": "spark"},
        entity_key_serialization_version=3,
        repo_path=str(root),
    )


def feature_repo(settings: Settings) -> FeatureRepo:
    """The Feast objects over this deployment's tables (apply them after the customers table changes)."""
    if load_table(settings, CUSTOMERS) is None:
        raise PropensityError("no customers table in the lake; ingest data first")
    sources = Sources(
        activity=table_name(settings, FEATURE_SNAPSHOTS),
        profile=table_name(settings, CUSTOMERS),
        score=table_name(settings, LATEST_SCORES),
    )
    return build_repo(sources, settings.snapshot_every_days)


def feature_store(settings: Settings) -> FeatureStore:
    settings.feature_store_dir.mkdir(parents=True, exist_ok=True)
    if settings.online_store == "redis":
        check_redis(settings)
    return FeatureStore(config=repo_config(settings))


def check_redis(settings: Settings) -> None:
    """One line naming the Redis online store when it cannot be reached, before anything is written."""
    import redis

    address, *options = settings.redis_connection.split(",")
    host, _, port = address.rpartition(":")
    kwargs = dict(option.split("=", 1) for option in options if "=" in option)
    password = settings.redis_password.get_secret_value() if settings.redis_password else kwargs.get("password")
    client = redis.Redis(
        host=host or address,
        port=int(port or 6379),
        db=int(kwargs.get("db", 0)),
        password=password,
        ssl=kwargs.get("ssl", "").lower() == "true",
        socket_connect_timeout=3,
    )
    try:
        client.ping()
    except redis.exceptions.RedisError as error:
        raise PropensityError(f"cannot reach the Redis online store at {address}: {error}") from error
    finally:
        client.close()


@contextmanager
def pinned_feature_store(settings: Settings, snapshots: dict[str, int]) -> Iterator[tuple[FeatureStore, FeatureRepo]]:
    """A Feast store whose views read the feature table and the customers table exactly as of the
    given snapshots (Iceberg's `<table>.snapshot_id_<id>`), for a training set that is the same
    whenever it is built: its registry is a throwaway file (the shared one keeps the live views),
    its offline store the same Spark session."""
    missing = sorted({FEATURE_SNAPSHOTS, CUSTOMERS} - set(snapshots))
    if missing:
        raise PropensityError(f"no snapshot given for the table(s) {', '.join(missing)}")
    sources = Sources(
        activity=snapshot_table_name(settings, FEATURE_SNAPSHOTS, snapshots[FEATURE_SNAPSHOTS]),
        profile=snapshot_table_name(settings, CUSTOMERS, snapshots[CUSTOMERS]),
        score=table_name(settings, LATEST_SCORES),
    )
    repo = build_repo(sources, settings.snapshot_every_days)
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pinned-feast-", dir=settings.scratch_dir) as folder:
        config = RepoConfig(
            project=settings.feast_project,
            provider="local",
            registry=RegistryConfig(path=str(Path(folder) / "registry.db")),
            online_store={"type": "sqlite", "path": str(Path(folder) / "online.db")},
            offline_store={"type": "spark"},
            entity_key_serialization_version=3,
            repo_path=folder,
        )
        store = FeatureStore(config=config)
        store.apply([repo.customer, repo.activity, repo.profile, repo.training_service])
        yield store, repo
