"""Training's MLflow side against the cluster's services, really started on 127.0.0.1: an `mlflow
server` on PostgreSQL with its artifacts in an S3-compatible object store (SeaweedFS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from components.candidates import BASELINES
from components.registry import Decision, register_models
from components.training import train_candidates, train_realtime_model
from propensity import features as F
from propensity.demo import running_server
from propensity.lake import ingest
from propensity.ports import free_port
from propensity.settings import Settings
from propensity.synthetic import generate
from propensity.tracking import CHALLENGER, CHAMPION, alias_version, load_sklearn, promote
from tests.services import MlflowServer, ObjectStore
from tests.test_serving_http import PREDICT, write_online
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
    candidate, *_baselines = train_candidates(settings, path, [{"max_iter": 10}])  # the learner first
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
    # The learner, each baseline (candidates too) and the real-time model.
    assert len(stored) == 2 + len(BASELINES) and any(model in source for model in stored), (stored, source)
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


def test_the_predictor_keeps_serving_while_mlflow_is_down(
    on_server: Settings, services: tuple[ObjectStore, MlflowServer], tmp_path: Path
) -> None:
    """MLflow goes away under a running predictor: it keeps answering with the model it has, stays
    ready, and loads the next champion once MLflow is back. Started while MLflow is down, it exits
    with one line naming the server."""
    _, server = services
    first = register_models(on_server, *_train_pair(on_server, tmp_path), PROMOTE)
    promote(on_server, first.batch.version, first.realtime.version)
    settings = on_server.model_copy(update={"serving_model_poll_seconds": 0.5})
    data = generate(customers=50, days=40, seed=3)  # the online store's tables come from the lake's
    data.transactions.to_parquet(tmp_path / "tx.parquet", index=False)
    data.customers.to_parquet(tmp_path / "customers.parquet", index=False)
    ingest(settings, tmp_path / "tx.parquet", tmp_path / "customers.parquet")
    write_online(settings)
    port = free_port()
    new_customer = {"instances": [{"customer_id": "c-new"}]}

    def served_version(client: httpx.Client) -> str:
        response = client.post(PREDICT, json=new_customer)
        assert response.status_code == 200, response.text
        return str(response.json()["predictions"][0]["model_version"])

    with running_server(settings, port) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert served_version(client) == first.realtime.version
        server.stop()
        try:
            deadline = time.monotonic() + 20  # the registry is polled every 0.5 s, each poll failing
            while time.monotonic() < deadline:
                assert served_version(client) == first.realtime.version
                assert client.get("/v2/health/ready").status_code == 200
                time.sleep(0.2)
            log = (settings.logs_dir / "server.log").read_text()
            assert "could not check the model registry" in log, log[-2000:]

            # A restart while MLflow is down: no model to serve, one clear line, a non-zero exit.
            started = subprocess.run(
                [sys.executable, "-m", "propensity.cli", "serve", "--port", str(free_port())],
                env={**os.environ, **settings.as_env()},
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert started.returncode == 2, started.stderr[-3000:]
            assert "Traceback" not in started.stdout + started.stderr, started.stderr[-3000:]
            (line,) = [line for line in started.stderr.splitlines() if line.startswith("error:")]
            assert line.startswith("error: MLflow:") and server.url in line, line
        finally:
            server.start()
        second = register_models(on_server, *_train_pair(on_server, tmp_path), PROMOTE)
        promote(on_server, second.batch.version, second.realtime.version)
        deadline = time.monotonic() + 60
        while (version := served_version(client)) != second.realtime.version:
            assert time.monotonic() < deadline, f"still serving v{version} after MLflow came back"
            time.sleep(0.5)
