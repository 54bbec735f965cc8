"""Open the Feast store described by the settings (SQLite locally, Redis on the cluster)."""

from __future__ import annotations

from pathlib import Path

from feast import FeatureStore, RepoConfig
from feast.repo_config import RegistryConfig

from feature_repo.definitions import FeatureRepo, build_repo
from propensity.settings import Settings


def feature_data_dir(settings: Settings) -> Path:
    return settings.feature_store_dir / "data"


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
        registry=RegistryConfig(path=str(root / "registry.db"), cache_ttl_seconds=60),
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=str(root),
    )


def feature_repo(settings: Settings) -> FeatureRepo:
    return build_repo(feature_data_dir(settings), settings.snapshot_every_days)


def feature_store(settings: Settings) -> FeatureStore:
    settings.feature_store_dir.mkdir(parents=True, exist_ok=True)
    feature_data_dir(settings).mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings))
