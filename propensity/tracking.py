"""MLflow access shared by training, batch scoring and serving: one place that knows the URIs."""

from __future__ import annotations

import fcntl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from propensity.errors import PropensityError
from propensity.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"


def configure(settings: Settings) -> str:
    """Point MLflow at the configured tracking store; return the experiment id (created if missing)."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    if settings.mlflow_tracking_uri:
        return _experiment_id(settings)
    # Parallel pipeline steps may be the first to touch the SQLite store; creating its tables twice
    # at once fails, so the first use is serialized with a file lock.
    folder = settings.home / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _experiment_id(settings)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _experiment_id(settings: Settings) -> str:
    experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(mlflow.create_experiment(settings.mlflow_experiment, settings.mlflow_artifact_location))
    except MlflowException:  # created concurrently by another process
        experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
        assert experiment is not None
        return str(experiment.experiment_id)


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def alias_version(settings: Settings, name: str, alias: str) -> ModelRef | None:
    """The model version an alias points to, or None when the model or alias does not exist yet."""
    configure(settings)
    try:
        mv = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return ModelRef(name=name, version=str(mv.version), run_id=str(mv.run_id))


def promote(settings: Settings, batch_version: str, realtime_version: str) -> None:
    """Move `champion` of both models to one release. Rollback is the same call with the previous one."""
    move_release_alias(settings, CHAMPION, batch_version, realtime_version)


def move_release_alias(settings: Settings, alias: str, batch_version: str, realtime_version: str) -> None:
    """Point `alias` of both models at one release.

    MLflow moves one alias per call. The batch model's alias is the commit point: readers resolve
    the real-time model through the version it names (`release_at`), so the real-time alias moves
    first and a process killed between the two calls leaves the previous release in force, whole.
    If the commit fails, the first move is undone."""
    configure(settings)
    client = MlflowClient()
    before = alias_version(settings, settings.realtime_model_name, alias)
    client.set_registered_model_alias(settings.realtime_model_name, alias, realtime_version)
    try:
        client.set_registered_model_alias(settings.model_name, alias, batch_version)
    except Exception:
        if before is None:
            client.delete_registered_model_alias(settings.realtime_model_name, alias)
        else:
            client.set_registered_model_alias(settings.realtime_model_name, alias, before.version)
        raise


# Version tags linking the two models of one training run, and marking a rolled-back pair.
REALTIME_VERSION_TAG = "realtime_model_version"
ROLLED_BACK_TAG = "rolled_back"


@dataclass(frozen=True)
class Release:
    """What one training run ships: the batch model and the real-time model registered with it."""

    batch: ModelRef
    realtime: ModelRef


def release(settings: Settings, batch_version: str) -> Release:
    """The pair registered as version `batch_version` of the batch model; a clear error otherwise."""
    configure(settings)
    client = MlflowClient()
    try:
        batch = client.get_model_version(settings.model_name, batch_version)
    except MlflowException:
        raise PropensityError(f"model '{settings.model_name}' has no version {batch_version}") from None
    return _paired(settings, client, batch)


def release_at(settings: Settings, alias: str) -> Release | None:
    """The release `alias` names (None before the first): the batch model's version under that
    alias and the real-time model paired with it, whatever the real-time model's own alias says."""
    configure(settings)
    client = MlflowClient()
    try:
        batch = client.get_model_version_by_alias(settings.model_name, alias)
    except MlflowException:
        return None
    return _paired(settings, client, batch)


def _paired(settings: Settings, client: MlflowClient, batch: ModelVersion) -> Release:
    realtime_version = batch.tags.get(REALTIME_VERSION_TAG)
    if not realtime_version:
        raise PropensityError(
            f"version {batch.version} of '{settings.model_name}' names no real-time model "
            f"(tag '{REALTIME_VERSION_TAG}'); it was not registered by the training pipeline"
        )
    realtime = client.get_model_version(settings.realtime_model_name, realtime_version)
    return Release(
        ModelRef(settings.model_name, str(batch.version), str(batch.run_id)),
        ModelRef(settings.realtime_model_name, str(realtime.version), str(realtime.run_id)),
    )


def served_realtime_model(settings: Settings) -> ModelRef | None:
    """The real-time model a server should serve: the pinned release's, else the champion's."""
    if settings.serving_model_version:
        return release(settings, settings.serving_model_version).realtime
    champion = release_at(settings, CHAMPION)
    return None if champion is None else champion.realtime


def rolled_back_versions(settings: Settings) -> frozenset[str]:
    """Versions of the batch model that were rolled back: their precomputed scores are not served."""
    configure(settings)
    versions = MlflowClient().search_model_versions(f"name = '{settings.model_name}'")
    return frozenset(str(v.version) for v in versions if v.tags.get(ROLLED_BACK_TAG) == "true")


# The only code a model file may make us run: scikit-learn's and LightGBM's own classes (and the
# OrderedDict LightGBM keeps its parameters in). Training saves with exactly these trusted (skops).
TRUSTED_MODEL_MODULES = ("sklearn.", "lightgbm.")
TRUSTED_MODEL_TYPES = frozenset({"collections.OrderedDict"})


def is_trusted_model_type(name: str) -> bool:
    return name.startswith(TRUSTED_MODEL_MODULES) or name in TRUSTED_MODEL_TYPES


def load_sklearn_uri(model_uri: str) -> Any:
    """A logged sklearn model, refusing anything but skops with our trusted types.

    MLflow takes skops' allow-list from the model's own MLmodel file (and unpickles other formats),
    so a model written by anyone with access to the artifact store could run code here. Its flavor
    configuration is checked against our own list before a byte of the model is deserialised.
    """
    import mlflow.sklearn
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        try:
            flavor = Model.load(local).flavors.get("sklearn") or {}
        except (OSError, MlflowException) as exc:
            raise PropensityError(f"model {model_uri} has no readable MLmodel file: {exc}") from exc
        _check_trusted(model_uri, flavor)
        return mlflow.sklearn.load_model(local)


def _check_trusted(model_uri: str, flavor: dict[str, Any]) -> None:
    import mlflow.sklearn

    serialization = flavor.get("serialization_format")
    if serialization != mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS:
        raise PropensityError(
            f"model {model_uri} is serialised as {serialization or 'unknown'}, not skops; refusing to "
            "unpickle it (retrain it with this version)"
        )
    untrusted = sorted(t for t in flavor.get("skops_trusted_types") or [] if not is_trusted_model_type(t))
    if untrusted:
        raise PropensityError(f"model {model_uri} asks to trust {', '.join(untrusted)}; refusing to load it")


def load_sklearn(ref: ModelRef) -> Any:
    return load_sklearn_uri(ref.uri)


RUNTIME_TAG = "serving_runtime"
RUNTIME_ARTIFACT = "serving/model.onnx"


def log_runtime(exported: bytes | None, difference: float) -> None:
    """Record in the active run which runtime serves the model, and the ONNX export if chosen."""
    from propensity.runtime import ONNX, SKLEARN

    mlflow.set_tag(RUNTIME_TAG, ONNX if exported is not None else SKLEARN)
    if difference != float("inf"):
        mlflow.log_metric("onnx_max_abs_diff", difference)
    if exported is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(RUNTIME_ARTIFACT).name
            path.write_bytes(exported)
            mlflow.log_artifact(str(path), artifact_path=str(Path(RUNTIME_ARTIFACT).parent))


def load_scorer(ref: ModelRef, features: list[str]) -> Any:
    """The runtime chosen at training time for a model version: ONNX, or its sklearn pipeline."""
    from propensity.runtime import ONNX, OnnxScorer, PipelineScorer

    run = MlflowClient().get_run(ref.run_id)
    if run.data.tags.get(RUNTIME_TAG) == ONNX:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=RUNTIME_ARTIFACT, dst_path=tmp)
            return OnnxScorer(Path(path).read_bytes(), features)
    return PipelineScorer(load_sklearn(ref), features)
