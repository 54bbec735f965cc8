"""Training's MLflow side against the cluster's services, really started on 127.0.0.1: an `mlflow
server` on PostgreSQL with its artifacts in an S3-compatible object store (SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from components.registry import Decision, register_models
from components.training import train_candidates, train_realtime_model
from propensity import features as F
from propensity.settings import Settings
from propensity.tracking import CHALLENGER, CHAMPION, alias_version, load_sklearn, promote
from tests.services import MlflowServer, ObjectStore
from tests.test_training_logic import _frame, written

pytestmark = pytest.mark.system
PROMOTE = Decision.unchecked("promote", "test")


@pytest.fixture
def services(object_store_and_mlflow: tuple[ObjectStore, MlflowServer]) -> tuple[ObjectStore, MlflowServer]:
    return object_store_and_mlflow


@pytest.fixture
def on_server(
    settings: Settings,
    services: tuple[ObjectStore, MlflowServer],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Settings:
    # Retry a dropped keep-alive connection, but fail in seconds, not after MLflow's minutes of
    # retries, when the test stops the server.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    name = request.node.name.removeprefix("test_")[:40]
    return settings.model_copy(
        update={"mlflow_tracking_uri": services[1].url, "model_name": name, "realtime_model_name": f"{name}-rt"}
    )


def _train_pair(settings: Settings, tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "training.parquet"
    if not path.exists():
        written(_frame(per_date=60), path)
    (candidate,) = train_candidates(settings, path, [{"max_iter": 10}])
    return candidate.run_id, train_realtime_model(settings, path)


def test_models_are_tracked_on_the_server_with_artifacts_in_object_storage(
    on_server: Settings, services: tuple[ObjectStore, MlflowServer], tmp_path: Path
) -> None:
    store, _ = services
    registered = register_models(on_server, *_train_pair(on_server, tmp_path), PROMOTE)
    promote(on_server, registered.batch.version, registered.realtime.version)

    champion = alias_version(on_server, on_server.model_name, CHAMPION)
    assert champion is not None and champion.version == registered.batch.version
    scores = load_sklearn(champion).predict_proba(_frame(n_dates=1)[F.BATCH_MODEL_FEATURES])[:, 1]
    assert ((scores > 0) & (scores < 1)).all()
    # The model files went through the server into the bucket; nothing of MLflow's is local.
    stored = {k.split("/models/")[1].split("/")[0] for k in store.keys("mlflow") if k.endswith("/artifacts/MLmodel")}
    source = MlflowClient().get_model_version(champion.name, champion.version).source
    assert len(stored) == 2 and any(model in source for model in stored), (stored, source)
    assert not (on_server.home / "mlflow").exists()


def test_mlflow_down_during_registration_moves_no_alias(
    on_server: Settings, services: tuple[ObjectStore, MlflowServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, server = services
    first = register_models(on_server, *_train_pair(on_server, tmp_path), PROMOTE)
    promote(on_server, first.batch.version, first.realtime.version)
    second_pair = _train_pair(on_server, tmp_path)

    register_model = mlflow.register_model

    def register_then_lose_the_server(*args: object, **kwargs: object) -> object:
        version = register_model(*args, **kwargs)  # type: ignore[arg-type]
        server.stop()  # the server goes away after the first version is registered
        return version

    monkeypatch.setattr(mlflow, "register_model", register_then_lose_the_server)
    try:
        with pytest.raises(Exception, match=server.url.split("//")[1]):
            register_models(on_server, *second_pair, PROMOTE)
    finally:
        monkeypatch.setattr(mlflow, "register_model", register_model)
        server.start()
    for name, version in ((on_server.model_name, first.batch), (on_server.realtime_model_name, first.realtime)):
        for alias in (CHALLENGER, CHAMPION):
            moved = alias_version(on_server, name, alias)
            assert moved is not None and moved.version == version.version, (name, alias)
