"""The predictor over HTTP, as clients call it: a real `propensity serve` process on a small
deployment (a lake, the Feast repo applied, a real-time model trained and promoted in MLflow, online
rows written through Feast). Every path, every kind of bad input, and no failed request under load.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore
from mlflow import MlflowClient

from components.training import train_realtime_model
from feature_repo.definitions import ACTIVITY_VIEW, PROFILE_VIEW, SCORE_VIEW
from feature_repo.store import feature_repo, repo_config
from propensity import features as F
from propensity.demo import free_port, running_server
from propensity.lake import ingest
from propensity.settings import Settings, get_settings
from propensity.storage import Storage
from propensity.synthetic import generate
from propensity.tracking import CHAMPION, configure
from serving.inference_log import read_records
from serving.schema import INSTANCE_FIELDS, MAX_INSTANCES

PREDICT = "/v1/models/propensity:predict"
INFER = "/v2/models/propensity/infer"
NOW = datetime.now(UTC)
# Customers the online store knows, by what it holds for them.
FRESH, STALE, AHEAD, PROFILE_ONLY = "c-fresh", "c-stale", "c-ahead", "c-profile-only"


def training_set(path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame(
        {
            F.EVENT_TIMESTAMP: pd.to_datetime("2026-01-01") + pd.to_timedelta(rng.integers(0, 6, n) * 7, unit="D"),
            "tenure_days": rng.integers(0, 900, n).astype(float),
            "orders_total": rng.poisson(3, n).astype(float),
            "orders_90d": rng.poisson(1, n).astype(float),
            "revenue_90d": np.round(rng.gamma(2, 40, n), 2),
            "country": rng.choice(["DE", "FR", "US"], n),
            "channel": rng.choice(["web", "app"], n),
        }
    )
    frame[F.LABEL] = (rng.random(n) < 1 / (1 + np.exp(-(frame["orders_90d"] - 1)))).astype(int)
    frame.to_parquet(path, index=False)
    return path


def write_online(settings: Settings) -> None:
    store = FeatureStore(config=repo_config(settings))
    store.apply(feature_repo(settings).objects)
    at = pd.Timestamp(NOW)
    known = [FRESH, STALE, AHEAD]
    activity = pd.DataFrame({F.ENTITY: known, F.EVENT_TIMESTAMP: at})
    for column in F.ACTIVITY_FEATURES:
        activity[column] = 3.0
    store.write_to_online_store(
        ACTIVITY_VIEW, activity.astype({c: "int64" for c in ("orders_total", "orders_30d", "orders_90d")})
    )
    profiles = pd.DataFrame({F.ENTITY: [*known, PROFILE_ONLY], "signup_date": at, "country": "DE", "channel": "web"})
    store.write_to_online_store(PROFILE_VIEW, profiles)
    stamps = {FRESH: NOW - timedelta(hours=2), STALE: NOW - timedelta(days=5), AHEAD: NOW + timedelta(minutes=10)}
    scores = pd.DataFrame(
        {
            F.ENTITY: list(stamps),
            F.EVENT_TIMESTAMP: at,
            "score": [0.25, 0.5, 0.75],
            "model_version": "7",
            "scored_at": [s.isoformat(timespec="seconds") for s in stamps.values()],
        }
    )
    store.write_to_online_store(SCORE_VIEW, scores)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("serving")
    settings = get_settings(home=root / "home")
    data = generate(customers=100, days=40, seed=3)
    data.transactions.to_parquet(root / "tx.parquet", index=False)
    data.customers.to_parquet(root / "customers.parquet", index=False)
    ingest(settings, root / "tx.parquet", root / "customers.parquet")
    run_id = train_realtime_model(settings, training_set(root / "training.parquet"))
    configure(settings)
    version = mlflow.register_model(f"runs:/{run_id}/model", settings.realtime_model_name).version
    MlflowClient().set_registered_model_alias(settings.realtime_model_name, CHAMPION, str(version))
    write_online(settings)
    return settings


@pytest.fixture(scope="module")
def server(deployment: Settings) -> Iterator[httpx.Client]:
    with running_server(deployment, free_port()) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def predict(client: httpx.Client, *instances: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(PREDICT, json={"instances": list(instances)})
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def test_each_customer_is_served_by_the_right_path(server: httpx.Client, deployment: Settings) -> None:
    fresh, stale, ahead, profile_only, new = predict(
        server,
        {"customer_id": FRESH},
        {"customer_id": STALE},
        {"customer_id": AHEAD},
        {"customer_id": PROFILE_ONLY},
        {"customer_id": "c-new", "country": "FR", "signup_date": "2026-01-01"},
    )
    assert (fresh["source"], fresh["score"], fresh["model"], fresh["model_version"]) == (
        "batch",
        0.25,
        deployment.model_name,
        "7",
    )
    assert ahead["source"] == "batch" and ahead["score"] == 0.75  # a clock a little ahead is not stale
    for p in (stale, profile_only, new):
        assert p["source"] == "realtime" and p["model"] == deployment.realtime_model_name
        assert 0 < p["score"] < 1 and p["model_version"] == "1"
    assert stale["score"] != 0.5


def test_a_json_body_is_accepted_whatever_its_declared_type(server: httpx.Client) -> None:
    body = json.dumps({"instances": [{"customer_id": FRESH}]})
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):  # curl -d sends the first
        headers = {"content-type": content_type} if content_type else {}
        response = server.post(PREDICT, content=body, headers=headers)
        assert response.status_code == 200, (content_type, response.text)
        assert response.json()["predictions"][0]["source"] == "batch"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [{"customer_id": "c-1", "device": "ios"}]}, "device"),  # unknown field
        ({"instances": [{"customer_id": 12}]}, "customer_id"),  # wrong type
        ({"instances": [{"customer_id": "c-1", "signup_date": "soon"}]}, "signup_date"),
        ({"instances": []}, "instances"),  # empty
        ({"instances": [{"customer_id": f"c-{i}"} for i in range(MAX_INSTANCES + 1)]}, "instances"),  # too many
        ({"instances": [{"customer_id": "x" * 1000}]}, "customer_id"),  # too long
        ({"rows": [1]}, "instances"),
        ([{"customer_id": "c-1"}], "JSON object"),
    ],
)
def test_bad_v1_requests_get_400_with_a_message(server: httpx.Client, body: Any, message: str) -> None:
    response = server.post(PREDICT, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize("content", [b"{not json", b'{"instances": [{"customer_id": "\xff\xfe"}]}', b"", b"\x00" * 64])
@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_undecodable_bodies_get_400(server: httpx.Client, content: bytes, content_type: str) -> None:
    response = server.post(PREDICT, content=content, headers={"content-type": content_type})
    assert response.status_code == 400, response.text


def v2(*inputs: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": list(inputs)}


def test_v2_open_inference_protocol(server: httpx.Client, deployment: Settings) -> None:
    body = v2(
        {"name": "customer_id", "shape": [2], "datatype": "BYTES", "data": [FRESH, "c-new"]},
        {"name": "country", "shape": [2], "datatype": "BYTES", "data": ["DE", "US"]},
    )
    response = server.post(INFER, json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["source"] == ["batch", "realtime"]
    assert outputs["model"] == [deployment.model_name, deployment.realtime_model_name]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (v2({"name": "country", "shape": [1], "datatype": "BYTES", "data": ["FR"]}), "customer_id"),
        (
            v2(
                {"name": "customer_id", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
                {"name": "country", "shape": [1], "datatype": "BYTES", "data": ["FR"]},
            ),
            "same length",
        ),
        (v2({"name": "customer_id", "shape": [1], "datatype": "FP32", "data": [1.5]}), "BYTES"),
        (v2({"name": "basket", "shape": [1], "datatype": "BYTES", "data": ["x"]}), "basket"),
        (v2({"name": "customer_id", "shape": [0], "datatype": "BYTES", "data": []}), "instances"),
        ({"inputs": "nope"}, ""),
    ],
)
def test_bad_v2_requests_get_400(server: httpx.Client, body: dict[str, Any], message: str) -> None:
    response = server.post(INFER, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_no_request_fails_under_concurrent_load(server: httpx.Client) -> None:
    async def load() -> list[int]:
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=30) as client:
            bodies = [{"instances": [{"customer_id": c}]} for c in (FRESH, STALE, "c-new", PROFILE_ONLY)] * 50
            responses = await asyncio.gather(*(client.post(PREDICT, json=b) for b in bodies))
            return [r.status_code for r in responses]

    assert set(asyncio.run(load())) == {200}


def test_prometheus_counts_predictions_by_source_and_version(server: httpx.Client, deployment: Settings) -> None:
    predict(server, {"customer_id": FRESH}, {"customer_id": "c-new"})
    metrics = server.get("/metrics").text
    assert (
        f'propensity_predictions_total{{model="{deployment.model_name}",model_version="7",source="batch"}}' in metrics
    )
    assert 'source="realtime"' in metrics


def test_inference_records_hold_declared_fields_only(deployment: Settings) -> None:
    # After the server stops (module teardown runs later), so read what the earlier tests logged
    # from a server of our own that we stop here.
    with running_server(deployment, free_port()) as url, httpx.Client(base_url=url) as client:
        predict(client, {"customer_id": "c-logged", "country": "FR"})
    records = [r for r in read_records(Storage(deployment)) if r["customer_id"] == "c-logged"]
    assert len(records) == 1
    record = records[0]
    assert set(INSTANCE_FIELDS) <= set(record) and record["country"] == "FR" and record["source"] == "realtime"
    assert {"score", "model", "model_version", "logged_at"} <= set(record)


def test_a_worker_copy_of_the_loaded_model_serves(deployment: Settings) -> None:
    """KServe starts extra workers (`propensity serve --workers N`) by pickling the loaded model into
    each process: the copy opens its own ONNX session, online-store reader and inference log."""
    import pickle

    from serving.predictor import PropensityModel
    from serving.schema import parse_instances

    model = PropensityModel(deployment)
    model.load()
    copy = pickle.loads(pickle.dumps(model))
    try:
        original, copied = (
            asyncio.run(m.score(parse_instances({"instances": [{"customer_id": FRESH}, {"customer_id": "c-w"}]})))
            for m in (model, copy)
        )
        assert [p["source"] for p in copied] == ["batch", "realtime"]
        assert [p["score"] for p in copied] == [p["score"] for p in original]
    finally:
        for m in (model, copy):
            if m.inference_log is not None:
                m.inference_log.stop()
