"""Training's MLflow side against the cluster's services, really started on 127.0.0.1: an `mlflow
server` on PostgreSQL with its artifacts in an S3-compatible object store (SeaweedFS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from pydantic import SecretStr

from components.features import materialize_features
from components.registry import Decision, promote, register_models
from components.training import train_candidates, train_realtime_model
from feature_repo.definitions import ACTIVITY_VIEW, PROFILE_VIEW, SCORE_VIEW
from feature_repo.store import feature_store
from propensity import features as F
from propensity.feature_table import snapshot_partition
from propensity.settings import Settings, get_settings
from propensity.tracking import CHALLENGER, CHAMPION, alias_version, load_sklearn
from tests import reference
from tests.services import MlflowServer, ObjectStore, mlflow_server, postgres_database, seaweedfs, spark_standalone
from tests.test_feature_store import online_rows, redis_or_skip
from tests.test_ingest import lake_customers, lake_transactions
from tests.test_training_logic import _frame

pytestmark = pytest.mark.system
PROMOTE = Decision("promote", "test", 0.9, None, None)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ObjectStore, MlflowServer]]:
    root = tmp_path_factory.mktemp("services")
    with seaweedfs(root / "weed", buckets=("mlflow",)) as store, mlflow_server(root, store) as server:
        yield store, server


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
        _frame(per_date=60).to_parquet(path, index=False)
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


def test_feast_registry_in_postgresql_and_redis_serve_a_pod_with_an_empty_work_dir(
    lake: Settings, tmp_path: Path
) -> None:
    """The materialize step applies the repo to a SQL registry and pushes to Redis; a predictor pod
    with nothing local (another work dir) finds the views and reads the same online values."""
    connection = redis_or_skip(db=12)
    with postgres_database("feast") as registry:
        shared = {"feast_registry": SecretStr(registry), "online_store": "redis", "redis_connection": connection}
        step = lake.model_copy(update=shared)
        pushed = materialize_features(step)
        assert pushed.online_rows > 0
        assert not (step.feature_store_dir / "registry.db").exists()

        pod = get_settings(home=tmp_path / "empty-pod", **shared)
        store = feature_store(pod)
        assert {v.name for v in store.list_feature_views()} >= {ACTIVITY_VIEW, PROFILE_VIEW, SCORE_VIEW}
        ids = [*lake_customers(lake)[F.ENTITY].head(20), "never-seen"]
        assert online_rows(pod, ids) == online_rows(step, ids)
        assert online_rows(pod, ids)["orders_total"][0] is not None
    redis_or_skip(db=12)


def test_features_are_computed_by_a_separate_spark_cluster(lake: Settings, tmp_path: Path) -> None:
    """The materialize step as a cluster runs it: the driver in the step's process, the work in
    executors of a standalone Spark cluster (master and worker in their own JVMs)."""
    with spark_standalone(tmp_path / "spark") as cluster:
        on_cluster = lake.model_copy(update={"spark_master": cluster.master, "spark_driver_host": "127.0.0.1"})
        # A process of its own: this test process already holds a local Spark session.
        done = subprocess.run(
            [sys.executable, "-c", MATERIALIZE],
            env={**os.environ, **on_cluster.as_env(), "SPARK_LOCAL_IP": "127.0.0.1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        executors_ran = list(cluster.work_dir.glob("app-*/*/stderr"))
    assert result["snapshots_computed"] == result["snapshot_dates"] > 3 and executors_ran

    as_of = pd.Timestamp(result["as_of_date"])
    expected = reference.activity_features(lake_customers(lake), lake_transactions(lake), [as_of])
    got = pd.read_parquet(snapshot_partition(lake, as_of))
    pd.testing.assert_frame_equal(
        got.set_index(F.ENTITY)[F.ACTIVITY_FEATURES].sort_index(),
        expected.set_index(F.ENTITY).loc[got[F.ENTITY], F.ACTIVITY_FEATURES].sort_index(),
        check_dtype=False,
    )


MATERIALIZE = """
import json
from dataclasses import asdict
from components.features import materialize_features
from propensity.settings import get_settings
print(json.dumps(asdict(materialize_features(get_settings()))))
"""
