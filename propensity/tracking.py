"""MLflow access shared by training, batch scoring and serving: one place that knows the URIs."""

from __future__ import annotations

import fcntl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

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


def load_sklearn(ref: ModelRef) -> Any:
    import mlflow.sklearn

    return mlflow.sklearn.load_model(ref.uri)


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
