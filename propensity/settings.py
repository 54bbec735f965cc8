"""One settings object for both ways to run (embedded default and cluster).

Values come from `PROPENSITY_*` environment variables and, optionally, a TOML file named by
`PROPENSITY_CONFIG`. Defaults make the embedded mode work in `./.propensity`. Nothing here is read
at import time: call `get_settings()` where a value is needed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROPENSITY_", extra="forbid")

    home: Path = Field(
        Path(".propensity"),
        description="Local work dir: logs and scratch; also the tables and records unless `tables` and "
        "`storage` say otherwise.",
    )
    tables: str | None = Field(
        None,
        description="Root of the Spark tables (lake, feature table, historic and latest scores; Iceberg): "
        "s3://bucket/prefix on any S3-compatible store (a cluster; `catalog` must be set too), or a path "
        "(default: the work dir).",
    )
    storage: str | None = Field(
        None,
        description="Where the shared records live (retraining history, online push records, inference log, "
        "reports): a path or s3://bucket/prefix on any S3-compatible store (default: the work dir).",
    )
    catalog: SecretStr | None = Field(
        None,
        description="Database of the Iceberg catalog of the Spark tables, a SQLAlchemy URL: sqlite:///path or "
        "postgresql+psycopg://user@host:5432/db, a password after the user (default: a SQLite file beside the "
        "tables).",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 API endpoint for a non-AWS store (MinIO, SeaweedFS); credentials: AWS_* variables."
    )
    s3_region: str | None = None
    kfp_pipeline_root: str | None = Field(
        None,
        description="Where KFP keeps step artifacts (training sets, reports): compiled into the pipelines "
        "(e.g. s3://bucket/kfp; default on a cluster: KFP's own); a local path for `propensity run`.",
    )

    # Raw data columns for bring-your-own data (`propensity ingest`).
    customer_id_column: str = "customer_id"
    timestamp_column: str = "timestamp"
    amount_column: str = "amount"

    # MLflow: SQLite + local artifacts by default, a tracking server on the cluster.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "propensity"
    model_name: str = "propensity"
    realtime_model_name: str = "propensity-realtime"

    # Feast: SQLite online store by default, Redis on the cluster.
    feast_project: str = "propensity"
    feast_registry: SecretStr | None = Field(
        None,
        description="Feast registry shared by every pod: a SQLAlchemy URL (postgresql+psycopg://user@host/db); "
        "default: a file in the work dir.",
    )
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection: str = "localhost:6379"
    redis_password: SecretStr | None = None

    spark_master: str = Field(
        "local[*]",
        description="local[*], a standalone master spark://host:7077, k8s://https://api-server, or a Spark Connect "
        "server sc://host:15002 (started with the project's jars and configuration). A local run starts one Spark "
        "Connect server on local[*] for all its steps.",
    )
    spark_driver_host: str | None = Field(
        None, description="Address executors reach the driver at (a headless Service on Kubernetes)."
    )
    spark_executor_memory: str = Field("2g", description="Memory of each executor (cluster masters only).")
    spark_executor_instances: int = Field(2, ge=1, description="Executors Spark on Kubernetes starts.")
    spark_executor_image: str | None = Field(None, description="Image of Spark executor pods (default: image).")
    spark_namespace: str | None = Field(
        None, description="Namespace of Spark executor pods (default: the namespace of the driver's pod)."
    )
    spark_shuffle_partitions: int = Field(8, ge=1, description="Partitions of Spark shuffles (joins, groupings).")
    spark_driver_java_options: str = Field(
        "",
        description="Extra JVM options of the Spark driver (in local mode, the JVM that runs every task), e.g. "
        "-XX:TieredStopAtLevel=1 for short runs on small data (docs/decisions.md).",
    )
    scoring_partitions: int | None = Field(
        None, ge=1, description="Partitions batch scoring repartitions to (default: as the feature table is laid out)."
    )
    table_retention_days: int = Field(
        30,
        ge=1,
        description="Table snapshots older than this are expired by the nightly maintenance step, with the files "
        "only they referenced: time travel (rebuilding a training set from its recorded snapshots) reaches back "
        "this far. The current snapshot of a table is always kept.",
    )
    table_maintenance_interval_hours: float = Field(
        20.0,
        ge=0,
        description="Table maintenance runs at most once in this many hours: batch-scoring runs within it (a "
        "backfill of many dates) skip the step. Below a day, so a nightly schedule maintains every night; "
        "0: every run.",
    )
    online_push_batch_rows: int = Field(10_000, ge=1, description="Rows per write when pushing to the online store.")
    online_push_partitions: int | None = Field(
        None, ge=1, description="Parallel writers of a push to Redis (default: Spark's default parallelism)."
    )

    # Labels and training.
    code_version: str | None = Field(
        None,
        description="The code's version, baked into the image at build time (`make image`); outside an image "
        "the git commit of the checkout is used.",
    )
    label_horizon_days: int = Field(30, gt=0)
    snapshot_every_days: int = Field(7, gt=0)
    training_window_days: int = Field(120, gt=0)
    training_max_rows: int = Field(
        500_000, ge=1, description="Cap on training-set rows; larger sets are sampled evenly per snapshot date."
    )
    candidate_threads: int = Field(
        1, ge=1, description="OpenMP threads per model fit (the cold-start model fits beside the candidates)."
    )
    min_auc: float = Field(0.6, ge=0.0, le=1.0)
    min_auc_improvement: float = Field(
        0.0, ge=0.0, lt=1.0, description="AUC the challenger must gain over the champion, at `gate_confidence`."
    )
    gate_confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description="Confidence of the one-sided DeLong interval of the AUC gain that must clear "
        "`min_auc_improvement` (a tie never promotes).",
    )
    gate_min_segment_rows: int = Field(
        200, ge=1, description="Segments (countries) with fewer test rows than this are not checked for regressions."
    )
    gate_segment_tolerance: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="AUC a segment (or the real-time model, on new customers) may lose to the champion before "
        "the release is rejected.",
    )
    realtime_min_auc: float = Field(
        0.55, ge=0.0, le=1.0, description="The real-time model's AUC floor, on test rows that look like new customers."
    )

    # Serving.
    serving_port: int = 8080
    score_max_age_hours: float = Field(36.0, gt=0)
    inference_log_rotate_seconds: float = Field(
        300.0, gt=0, description="Age at which a spooled inference-log segment is published to storage."
    )
    serving_workers: int = Field(
        1, ge=1, description="Server processes (KServe workers), each with its own event loop."
    )
    serving_worker_start_seconds: float = Field(
        120.0,
        gt=0,
        description="How long a new worker process may take to import and load before KServe's supervisor "
        "gives up on it (KServe's own limit, 5 s, is shorter than importing Feast, MLflow and KServe).",
    )
    serving_read_threads: int = Field(
        1, ge=1, description="Threads per server process for online stores without an async client (SQLite)."
    )
    serving_health_interval_seconds: float = Field(
        5.0, gt=0, description="How often a server process checks that the online store answers (readiness)."
    )
    serving_model_version: str | None = Field(
        None,
        pattern=r"^[1-9][0-9]*$",
        description="Serve this version of `model_name` and the real-time model registered with it (the deploy "
        "step pins it in the InferenceService); default: follow the `champion` aliases, swapping in a new "
        "champion while serving.",
    )
    serving_model_poll_seconds: float = Field(
        30.0, gt=0, description="How often a server process checks the registry for a new champion or rollback."
    )

    # Deploy (`propensity deploy` / `rollback`, the pipelines' deploy step).
    deploy_target: Literal["local", "kubernetes"] = Field(
        "local", description="'kubernetes': roll out the InferenceService; 'local': the server on `serving_port`."
    )
    deploy_namespace: str | None = Field(
        None, description="Namespace of the InferenceService (default: the namespace of this pod, else 'default')."
    )
    inference_service: str = Field("propensity", description="Name of the InferenceService the deploy step rolls out.")
    deploy_canary_percent: int = Field(10, ge=1, le=99, description="Traffic share of a new version during its canary.")
    deploy_smoke_requests: int = Field(20, ge=1, le=10_000, description="Smoke requests sent to a new version.")
    deploy_max_error_rate: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of failed smoke requests above which a new version is rolled back."
    )
    deploy_max_p95_ms: float = Field(
        1000.0, gt=0, description="p95 smoke latency (ms) above which a new version is rolled back."
    )
    deploy_timeout_seconds: float = Field(
        600.0, gt=0, description="How long a new version may take to become ready before it is rolled back."
    )

    # Monitoring: drift (Evidently's default methods and thresholds), realised accuracy, trigger policy.
    drift_share_threshold: float = Field(
        0.3, gt=0.0, le=1.0, description="A check finds drift when at least this share of its columns drifted."
    )
    drift_numeric_method: Literal["wasserstein", "psi"] = Field(
        "wasserstein", description="Numeric columns: normed Wasserstein distance, or population stability index."
    )
    drift_categorical_method: Literal["jensenshannon", "psi"] = Field(
        "jensenshannon", description="Categorical columns (and numeric ones with at most 5 values)."
    )
    drift_numeric_threshold: float = Field(0.1, gt=0.0, description="A numeric column drifts at this distance.")
    drift_categorical_threshold: float = Field(0.1, gt=0.0, description="A categorical column drifts at this distance.")
    drift_column_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description='Per-column thresholds over the two above, e.g. {"orders_30d": 0.2} for a seasonal column.',
    )
    drift_sample_rows: int = Field(
        100_000,
        ge=1_000,
        description="Bounded uniform sample of a check's current rows: the inference log is profiled from it, "
        "and the Evidently HTML report renders it.",
    )
    drift_min_rows: int = Field(
        500, ge=1, description="Fewer current rows than this are too few to judge drift: the check says so."
    )
    inference_window_days: int = Field(1, ge=1, le=90, description="Days of inference log one check looks at.")
    prediction_drift_previous_dates: int = Field(
        7, ge=1, description="Earlier scoring dates the newest batch scores are compared with."
    )
    accuracy_auc_floor: float = Field(0.6, ge=0.0, le=1.0, description="Realised AUC below this is a trigger.")
    accuracy_auc_tolerance: float = Field(
        0.05, ge=0.0, le=1.0, description="Realised AUC this far below the model's own test AUC is a trigger."
    )
    trigger_required_checks: int = Field(2, ge=1, description="N: a condition must hold in N of the last M checks.")
    trigger_window_checks: int = Field(3, ge=1, description="M: how many recent checks the N-of-M rule looks at.")
    retrain_cooldown_hours: float = Field(24.0, ge=0.0)
    retrain_running_expiry_hours: float = Field(
        12.0, gt=0.0, description="A local 'running' retraining record older than this was left by a killed process."
    )

    # Cluster.
    kfp_namespace: str | None = Field(None, description="Kubeflow profile namespace of runs (multi-user).")
    kfp_token: SecretStr | None = Field(None, description="Bearer token for the KFP API.")
    kfp_cookies: SecretStr | None = Field(None, description="Session cookie(s) for the KFP API, e.g. behind Dex.")
    kfp_service_account: str = Field(
        "propensity-pipeline", description="Kubernetes ServiceAccount pipeline runs use (Spark starts executors)."
    )
    kfp_host: str | None = None
    image: str = "propensity:0.1.0"

    @field_validator("drift_column_thresholds")
    @classmethod
    def _positive_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not v > 0)
        if bad:
            raise ValueError(f"thresholds must be positive numbers: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _n_of_m(self) -> Settings:
        if self.trigger_required_checks > self.trigger_window_checks:
            raise ValueError(
                f"trigger_required_checks ({self.trigger_required_checks}) cannot exceed "
                f"trigger_window_checks ({self.trigger_window_checks})"
            )
        return self

    @field_validator("feast_registry")
    @classmethod
    def _registry_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and "://" not in value.get_secret_value():
            raise ValueError("must be a SQLAlchemy database URL, e.g. postgresql+psycopg://user@host:5432/feast")
        return value

    @field_validator("catalog")
    @classmethod
    def _catalog_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("sqlite:///", "postgresql", "postgres://")):
            raise ValueError("must be a SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host:5432/db")
        return value

    @field_validator("spark_master")
    @classmethod
    def _known_master(cls, value: str) -> str:
        if not value.startswith(("local", "spark://", "k8s://", "sc://")):
            raise ValueError(
                "must be local[*], spark://host:port (standalone), k8s://https://host (Kubernetes) "
                "or sc://host:port (Spark Connect)"
            )
        return value

    @field_validator("home")
    @classmethod
    def _absolute_path(cls, value: Path) -> Path:
        if str(value).startswith(("s3:/", "s3a:/", "gs:/")):
            raise ValueError("the work dir is a local path; put tables in `tables` and records in `storage`")
        return value.expanduser().resolve()

    @field_validator("tables", "storage")
    @classmethod
    def _path_or_s3(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep:
            return str(Path(value).expanduser().resolve())
        if scheme == "file":
            return str(Path(rest).expanduser().resolve())
        if scheme != "s3" or not rest.strip("/"):
            raise ValueError("must be a path or s3://bucket[/prefix]")
        return f"s3://{rest.strip('/')}"

    @model_validator(mode="after")
    def _tables_on_object_store(self) -> Settings:
        if self.tables_on_object_store and self.catalog is None:
            raise ValueError(
                "tables on an object store need `catalog`, the database of their Iceberg catalog "
                "(postgresql+psycopg://user@host:5432/db on a cluster)"
            )
        if self.spark_master.startswith("k8s://") and not self.tables_on_object_store:
            raise ValueError(
                f"spark_master {self.spark_master} starts executor pods that share no disk with the driver: "
                "put the tables on an object store (tables = s3://bucket/prefix)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("PROPENSITY_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"PROPENSITY_CONFIG points to {config_file}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def with_values(self, **changes: object) -> Settings:
        """These settings with some values replaced (None keeps a value), validated like any other:
        how a pipeline parameter (window, horizon) reaches the step functions."""
        given = {name: value for name, value in changes.items() if value is not None}
        return type(self)(**{**self.model_dump(), **given})

    def as_env(self) -> dict[str, str]:
        """These settings as PROPENSITY_* variables, so that child processes (pipeline steps, the
        server) see exactly the settings of the process that started them."""
        env = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[f"PROPENSITY_{name.upper()}"] = str(value)
        return env

    # Derived locations. Spark tables under `data_root`; shared records under `storage_url`
    # (propensity.storage); only logs and scratch stay in `home`.
    @property
    def tables_on_object_store(self) -> bool:
        return self.tables is not None and self.tables.startswith("s3://")

    @property
    def data_root(self) -> Path:
        """The local folder of the tables (their warehouse, the embedded catalog) and of Feast's local
        files: `tables`, or the work dir when it is unset or on an object store."""
        return Path(self.tables) if self.tables is not None and not self.tables_on_object_store else self.home

    @property
    def storage_url(self) -> str:
        return self.storage or str(self.home)

    @property
    def feature_store_dir(self) -> Path:
        return self.data_root / "feature_store"

    @property
    def online_pushes_key(self) -> str:
        """Storage key of what was last pushed to this online store, per feature view (never roll it
        back). One record per store: pointing the settings at another store pushes everything again."""
        if self.online_store == "sqlite":
            return "feature_store/online_pushes.json"
        store = hashlib.sha256(self.redis_connection.encode()).hexdigest()[:12]
        return f"feature_store/online_pushes-{self.online_store}-{store}.json"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def inference_spool_dir(self) -> Path:
        """Local spool of the inference log; closed segments move to storage (`inference/`)."""
        return self.logs_dir / "inference-spool"

    @property
    def scratch_dir(self) -> Path:
        """Local scratch (Spark spill, temporary files); nothing in it outlives a step."""
        return self.home / "tmp"

    @property
    def local_pipeline_root(self) -> Path:
        """Where `propensity run` (kfp.local, which writes only to a local disk) keeps step artifacts."""
        root = self.kfp_pipeline_root
        if root and "://" not in root:
            return Path(root).expanduser().resolve()
        return self.home / "kfp"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_location(self) -> str | None:
        """Artifact folder for the embedded mode; a tracking server decides its own."""
        if self.mlflow_tracking_uri:
            return None
        return (self.home / "mlflow" / "artifacts").as_uri()


# On a cluster the settings come from this ConfigMap and the credentials from this Secret (both in
# manifests/base); the pipeline steps and the Spark executors read them.
CONFIG_MAP = "propensity-config"
# Security lint (B105): the name of a Kubernetes Secret, not a secret.
SECRET = "propensity-secrets"  # nosec B105  # pragma: allowlist secret

# Settings that hold credentials: on a cluster they come from a Secret, never from the ConfigMap.
SECRET_SETTINGS = ("redis_password", "kfp_token", "kfp_cookies", "feast_registry", "catalog")


def get_settings(**overrides: object) -> Settings:
    """Read settings now (environment, optional TOML file), with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]


POD_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def pod_namespace() -> str | None:
    """The namespace of the pod this runs in (its service account's), or None outside a pod."""
    path = POD_ACCOUNT / "namespace"
    return path.read_text().strip() or None if path.is_file() else None
