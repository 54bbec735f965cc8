"""Open the Feast store described by the settings (SQLite locally, Redis on the cluster)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from feast import FeatureStore, RepoConfig
from feast.repo_config import RegistryConfig

from feature_repo.definitions import FeatureRepo, SourcePaths, build_repo
from propensity import features as F
from propensity.errors import PropensityError
from propensity.settings import Settings
from propensity.tables import atomic_path, current_version


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


def _empty_score_source(settings: Settings) -> Path:
    """Scores reach the online store by push; the view still needs an offline source with its schema."""
    path = settings.feature_store_dir / "offline" / "customer_score.parquet"
    if not path.exists():
        empty = pd.DataFrame(
            {
                F.ENTITY: pd.Series(dtype=str),
                F.EVENT_TIMESTAMP: pd.Series(dtype="datetime64[ns]"),
                "score": pd.Series(dtype=float),
                "model_version": pd.Series(dtype=str),
                "scored_at": pd.Series(dtype=str),
            }
        )
        with atomic_path(path) as tmp:
            empty.to_parquet(tmp, index=False)
    return path


def feature_repo(settings: Settings) -> FeatureRepo:
    """The Feast objects over this deployment's tables (apply them after the customers table changes)."""
    profile = current_version(settings.customers_path)
    if profile is None:
        raise PropensityError(f"no customers table in {settings.lake_dir}; ingest data first")
    paths = SourcePaths(activity=settings.offline_features_path, profile=profile, score=_empty_score_source(settings))
    return build_repo(paths, settings.snapshot_every_days)


def feature_store(settings: Settings) -> FeatureStore:
    settings.feature_store_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings))
