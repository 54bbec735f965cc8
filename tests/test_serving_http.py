"""The predictor over HTTP, as clients call it: a real `propensity serve` process on a small
deployment (a lake, the Feast repo applied, a real-time model trained and promoted in MLflow, online
rows written through Feast). Every path, every kind of bad input, and no failed request under load.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import schemathesis
from feast import FeatureStore
from mlflow import MlflowClient
from schemathesis import GenerationMode

from components.deploy import DEPLOYED, SMOKE_PREFIX, LocalServer, deploy
from components.training import train_realtime_model
from feature_repo.definitions import ACTIVITY_VIEW, PROFILE_VIEW, SCORE_VIEW
from feature_repo.store import feature_repo, repo_config
from propensity import features as F
from propensity.demo import running_server, wait_until_ready
from propensity.errors import PropensityError
from propensity.lake import ingest
from propensity.ports import free_port
from propensity.settings import Settings, get_settings
from propensity.storage import Storage
from propensity.synthetic import generate
from propensity.tracking import CHAMPION, REALTIME_VERSION_TAG, ROLLED_BACK_TAG, alias_version, configure, promote
from serving.inference_log import read_records
from serving.schema import INSTANCE_FIELDS, MAX_INSTANCES, PredictRequest
from tests.test_training_logic import written

# Starts Spark, a pipeline run or a server: left out by `make test-fast`.
pytestmark = pytest.mark.slow

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
            F.ENTITY: [f"c-{i}" for i in range(n)],
            # Twelve weekly snapshots: room for the split's embargo of one label horizon.
            F.EVENT_TIMESTAMP: pd.to_datetime("2026-01-01") + pd.to_timedelta(rng.integers(0, 12, n) * 7, unit="D"),
            "tenure_days": rng.integers(0, 900, n).astype(float),
            "orders_total": rng.poisson(3, n).astype(float),
            "orders_90d": rng.poisson(1, n).astype(float),
            "revenue_90d": np.round(rng.gamma(2, 40, n), 2),
            # A fifth look like new customers (no purchase within the active window): the gate's rows.
            "days_since_last_order": np.where(rng.random(n) < 0.2, F.NO_ORDER_DAYS, rng.uniform(0, 300, n)),
            "country": rng.choice(["DE", "FR", "US"], n),
            "channel": rng.choice(["web", "app"], n),
        }
    )
    frame[F.LABEL] = (rng.random(n) < 1 / (1 + np.exp(-(frame["orders_90d"] - 1)))).astype(int)
    return written(frame, path)


def write_online(settings: Settings) -> None:
    store = FeatureStore(config=repo_config(settings))
    store.apply(feature_repo(settings).objects)
    at = pd.Timestamp(NOW)
    known = [FRESH, STALE, AHEAD]
    activity = pd.DataFrame({F.ENTITY: known, F.EVENT_TIMESTAMP: at})
    for column in F.SNAPSHOT_FEATURES:
        activity[column] = 3.0 if column in F.ACTIVITY_FEATURES else 0.5
    integers = ("orders_total", "orders_30d", "orders_90d", "orders_prev_90d")
    store.write_to_online_store(ACTIVITY_VIEW, activity.astype({c: "int64" for c in integers}))
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
    # The server checks the registry every half second here (for the model swap tests).
    settings = get_settings(home=root / "home", serving_model_poll_seconds=0.5)
    data = generate(customers=100, days=40, seed=3)
    data.transactions.to_parquet(root / "tx.parquet", index=False)
    data.customers.to_parquet(root / "customers.parquet", index=False)
    ingest(settings, root / "tx.parquet", root / "customers.parquet")
    run_id = train_realtime_model(settings, training_set(root / "training.parquet"))
    configure(settings)
    realtime = mlflow.register_model(f"runs:/{run_id}/model", settings.realtime_model_name).version
    # The release's batch model is a placeholder: this server serves only the real-time model.
    client = MlflowClient()
    client.create_registered_model(settings.model_name)
    batch = client.create_model_version(settings.model_name, "file:///batch-model").version
    client.set_model_version_tag(settings.model_name, batch, REALTIME_VERSION_TAG, str(realtime))
    promote(settings, str(batch), str(realtime))
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
    # Why each real-time answer: a customer the store knows nothing of is flagged apart from the rest.
    assert [p["reason"] for p in (fresh, stale, ahead, profile_only, new)] == [
        None,
        "stale_score",
        None,
        "no_score",
        "not_in_online_store",
    ]


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
        f'propensity_predictions_total{{model="{deployment.model_name}",model_version="7",reason="",source="batch"}}'
        in metrics
    )
    assert 'reason="not_in_online_store",source="realtime"' in metrics
    # What became of each inference record (the soak benchmark reads the drops from here): both
    # instances written to the spool by the writer thread, within a second or so.
    deadline = time.monotonic() + 10
    while not re.search(r'^propensity_inference_records_total\{outcome="written"\} [1-9]', metrics, re.M):
        assert time.monotonic() < deadline, "no written inference records on /metrics"
        time.sleep(0.2)
        metrics = server.get("/metrics").text


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


def test_several_worker_processes_serve_and_log_separately(deployment: Settings) -> None:
    """`propensity serve --workers 2`: KServe's supervisor spawns two processes sharing the socket; each
    answers, and each logs to a spool folder of its own."""
    workers = deployment.model_copy(update={"serving_workers": 2})
    spool = deployment.inference_spool_dir
    before = {p.name for p in spool.iterdir()} if spool.exists() else set()
    with running_server(workers, free_port(), timeout=300) as url:

        async def load() -> list[int]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                bodies = [{"instances": [{"customer_id": c}]} for c in (FRESH, "c-new")] * 100
                return [r.status_code for r in await asyncio.gather(*(client.post(PREDICT, json=b) for b in bodies))]

        for _ in range(3):
            assert set(asyncio.run(load())) == {200}
            folders = {p.name for p in spool.iterdir()} - before
            if len(folders) == 2:
                break
        pids = {name.split("-", 1)[0] for name in folders}
    assert len(pids) == 2, f"requests were served by worker processes {pids}"


# Registry changes while serving. These run last: they move the champion the tests above rely on.


def register_release(settings: Settings, realtime_source: str | None = None) -> str:
    """A new release: the real-time model registered again from the champion's run (or a broken one
    from `realtime_source`), paired with a new batch model version. Returns the batch version."""
    configure(settings)
    mlflow_client = MlflowClient()
    if realtime_source is None:
        run_id = mlflow_client.get_model_version_by_alias(settings.realtime_model_name, CHAMPION).run_id
        realtime = mlflow.register_model(f"runs:/{run_id}/model", settings.realtime_model_name).version
    else:
        realtime = mlflow_client.create_model_version(settings.realtime_model_name, realtime_source).version
    try:
        mlflow_client.get_registered_model(settings.model_name)
    except mlflow.exceptions.MlflowException:
        mlflow_client.create_registered_model(settings.model_name)
    batch = mlflow_client.create_model_version(settings.model_name, "file:///batch-model").version
    mlflow_client.set_model_version_tag(settings.model_name, batch, REALTIME_VERSION_TAG, str(realtime))
    return str(batch)


@contextmanager
def steady_load(url: str, clients: int = 4) -> Iterator[list[str]]:
    """Requests (known, stale and new customers) sent back to back until the block ends; the failures."""
    failures: list[str] = []
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post(
                        PREDICT, json={"instances": [{"customer_id": FRESH}, {"customer_id": "c-n"}]}
                    )
                    if response.status_code != 200:
                        failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    failures.append(repr(error))

    threads = [threading.Thread(target=send) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield failures
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def realtime_version(client: httpx.Client) -> str:
    return str(predict(client, {"customer_id": "c-probe"})[0]["model_version"])


def test_deploy_swaps_the_model_under_load_without_a_failed_request(server: httpx.Client, deployment: Settings) -> None:
    local = deployment.model_copy(update={"serving_port": server.base_url.port, "deploy_timeout_seconds": 60.0})
    good = register_release(deployment)
    new_version = MlflowClient().get_model_version(deployment.model_name, good).tags[REALTIME_VERSION_TAG]
    with steady_load(str(server.base_url)) as failures:
        time.sleep(1)
        event = deploy(local, good, LocalServer(local, poll_seconds=0.2))
        time.sleep(1)
    assert event.outcome == DEPLOYED and "0 failed" in event.detail, event
    assert realtime_version(server) == new_version
    assert failures == []
    time.sleep(1)  # the writer thread appends to the spool within a second
    spooled = b"".join(path.read_bytes() for path in deployment.inference_spool_dir.rglob("*.jsonl"))
    assert b'"c-n"' in spooled and SMOKE_PREFIX.encode() not in spooled, "smoke requests reached the inference log"

    # A release whose real-time model cannot be loaded: the server refuses to swap it in and keeps
    # serving; the deploy step sees the old version answer, rolls the aliases back and fails.
    broken = register_release(deployment, realtime_source="file:///no/such/model")
    impatient = local.model_copy(update={"deploy_timeout_seconds": 5.0})
    with steady_load(str(server.base_url)) as failures, pytest.raises(PropensityError, match="rolled back to v"):
        deploy(impatient, broken, LocalServer(impatient, poll_seconds=0.2))
    assert failures == []
    assert realtime_version(server) == new_version
    assert alias_version(deployment, deployment.model_name, CHAMPION).version == good  # type: ignore[union-attr]


def test_scores_of_a_rolled_back_batch_version_are_not_served(server: httpx.Client, deployment: Settings) -> None:
    """The online store still holds scores by batch v7; once v7 is rolled back they fall back to real time."""
    configure(deployment)
    mlflow_client = MlflowClient()
    while int(register_release(deployment)) < 7:
        pass
    mlflow_client.set_model_version_tag(deployment.model_name, "7", ROLLED_BACK_TAG, "true")
    try:
        deadline = time.monotonic() + 30
        while (answer := predict(server, {"customer_id": FRESH})[0])["source"] == "batch":
            assert time.monotonic() < deadline, "the server still serves scores of a rolled-back version"
            time.sleep(0.2)
        assert answer["reason"] == "rolled_back"
    finally:
        mlflow_client.delete_model_version_tag(deployment.model_name, "7", ROLLED_BACK_TAG)
    deadline = time.monotonic() + 30
    while predict(server, {"customer_id": FRESH})[0]["source"] != "batch":
        assert time.monotonic() < deadline, "scores of v7 are not served again"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------------
# Fuzzing: every operation of the OpenAPI document the server itself serves, with the V1 contract
# (which KServe leaves untyped) filled in from serving.schema, in schemathesis' positive and negative
# modes. Expected of each answer: no 5xx (but 501 for :explain and model versions, which KServe does
# not implement here),
# a 4xx carries one line of JSON error, and nothing takes longer than a few seconds.

FUZZ_EXAMPLES = 60  # per operation, model name and mode: over 1,000 requests in all
SLOW_ANSWER_SECONDS = 10.0


def served_openapi(client: httpx.Client) -> dict[str, Any]:
    doc: dict[str, Any] = client.get("/openapi.json").json()
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    contract = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(contract.pop("$defs", {}))
    schemas["PredictRequest"] = contract
    operation = doc["paths"]["/v1/models/{model_name}:predict"]["post"]
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    }
    return doc


def kserve_does_not_implement(path: str, query: dict[str, Any] | None) -> bool:
    """The requests where 501 Not Implemented is the right answer: explanations (the model has no
    explainer) and model versions, in the path or as `model_version` (KServe serves one version per
    model name)."""
    return path.endswith(":explain") or "/versions/" in path or bool(query and query.get("model_version"))


def answer_problems(
    method: str, path: str, response: Any, seconds: float, query: dict[str, Any] | None = None
) -> list[str]:
    """What is wrong with one answer: a 5xx (but 501 where KServe does not implement the route), no
    one-line JSON error with a 4xx or 501, a traceback, or a slow answer."""
    problems = []
    status = response.status_code
    if seconds > SLOW_ANSWER_SECONDS:
        problems.append(f"took {seconds:.1f} s")
    if status >= 500 and not (status == 501 and kserve_does_not_implement(path, query)):
        problems.append(f"HTTP {status}")
    text = response.text
    if "Traceback" in text or 'File "' in text:
        problems.append("a traceback in the answer")
    if (400 <= status < 500 and status not in (404, 405)) or status == 501:
        try:
            message = response.json()
        except ValueError:
            message = None
        error = (message.get("error") or message.get("detail")) if isinstance(message, dict) else None
        if not error or (isinstance(error, str) and "\n" in error):
            problems.append(f"HTTP {status} without a one-line JSON error: {text[:200]}")
    return [f"{method} {path} -> {p}" for p in problems]


def fuzz(
    operation: Any, mode: GenerationMode, base_url: str, tried: Counter[tuple[str, int]], **fixed: Any
) -> list[str]:
    """Send `FUZZ_EXAMPLES` generated requests to one operation; the problems found in the answers.
    `fixed` pins parts of the request (e.g. the model's name, so that bodies reach the model)."""
    problems: list[str] = []
    session = requests.Session()

    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def send(case: schemathesis.Case) -> None:
        started = time.monotonic()
        response = case.call(base_url=base_url, session=session, timeout=SLOW_ANSWER_SECONDS * 3)
        tried[(mode.value, response.status_code)] += 1
        seconds = time.monotonic() - started
        problems.extend(answer_problems(case.method, case.formatted_path, response, seconds, case.query))

    try:
        send()
    except hypothesis.errors.Unsatisfiable:  # e.g. no negative request exists for an operation without inputs
        assert mode == GenerationMode.NEGATIVE, operation.label
    return problems


def test_fuzzed_requests_get_4xx_or_an_answer_never_a_5xx(server: httpx.Client) -> None:
    schema = schemathesis.openapi.from_dict(served_openapi(server))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [o.label for o in operations]
    tried: Counter[tuple[str, int]] = Counter()
    problems = []
    for operation in operations:
        # Random model names (mostly 404), then this model's name so that bodies reach the predictor.
        names = [{}, {"path_parameters": {"model_name": "propensity"}}] if "{model_name}" in operation.path else [{}]
        for fixed in names:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                problems += fuzz(operation, mode, str(server.base_url), tried, **fixed)
    total = sum(tried.values())
    print(f"fuzzed {total} requests over {len(operations)} operations: {sorted(tried.items())}")
    assert total >= 1000, tried
    assert not problems, f"{len(problems)} bad answers, e.g. {sorted(set(problems))[:10]}"
    # The server still serves, and still has its model (load/unload over HTTP are refused).
    assert predict(server, {"customer_id": FRESH})[0]["source"] == "batch"


@pytest.mark.parametrize("action", ["load", "unload"])
def test_models_cannot_be_loaded_or_unloaded_over_http(server: httpx.Client, action: str) -> None:
    response = server.post(f"/v2/repository/models/propensity/{action}")
    assert response.status_code == 403, response.text
    assert predict(server, {"customer_id": FRESH})[0]["source"] == "batch"


# ---------------------------------------------------------------------------------------------------
# Faults: a server killed (SIGKILL) under load while it swaps in a new model.


def start_server(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    log = settings.logs_dir / f"server-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "propensity.cli", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **settings.as_env()},
        )
    wait_until_ready(process, f"http://127.0.0.1:{port}/v2/health/ready", log, 300)
    return process


def test_a_server_killed_mid_request_and_mid_swap_restarts_clean(deployment: Settings) -> None:
    """Killed with requests in flight while it loads a new champion: the next server comes up on the
    registry's champion, publishes what the dead one spooled (whole records, none twice), and serves."""
    port = free_port()
    log = deployment.logs_dir / f"server-{port}.log"
    first = start_server(deployment, port)
    started_at = log.stat().st_size  # the log is appended to: this server's lines start here

    def first_log() -> str:
        return log.read_bytes()[started_at:].decode(errors="replace")

    answered: list[str] = []
    cut_off: list[str] = []  # requests that got no answer: sent when the server died, or after
    stop = threading.Event()

    def send(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while not stop.is_set():
                customer = f"c-kill-{worker}-{n}"
                n += 1
                try:
                    response = client.post(PREDICT, json={"instances": [{"customer_id": customer}]})
                except httpx.HTTPError:
                    cut_off.append(customer)
                    continue
                if response.status_code == 200:
                    answered.append(customer)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        # A new real-time champion: the server starts loading it within its poll interval (0.5 s). It
        # is killed as soon as its log says the load began: downloading, loading and checking a model
        # takes far longer than noticing that line.
        configure(deployment)
        batch = register_release(deployment)
        realtime = MlflowClient().get_model_version(deployment.model_name, batch).tags[REALTIME_VERSION_TAG]
        promote(deployment, batch, realtime)
        loading = f"new real-time model v{realtime}: loading it"
        deadline = time.monotonic() + 60
        while loading not in first_log():
            assert time.monotonic() < deadline and first.poll() is None, first_log()[-2000:]
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert first.returncode == -signal.SIGKILL and answered and cut_off  # requests were cut off
    # The kill landed while the new model was loading: it began, and was never served.
    assert loading in first_log() and f"real-time model v{realtime} served by" not in first_log()
    second = start_server(deployment, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert realtime_version(client) == realtime
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    logged = [r["customer_id"] for r in read_records(Storage(deployment)) if r["customer_id"].startswith("c-kill-")]
    assert len(logged) == len(set(logged)), "a record was published twice"
    # A record is written before its answer is sent: a request in flight at the kill (one per client
    # thread at most) may be logged and never answered. Anything else logged was answered.
    unanswered = set(logged) - set(answered)
    assert unanswered <= set(cut_off) and len(unanswered) <= len(threads), unanswered
    # What the dead process had queued but not yet written is lost: at most its last moments.
    lost = len(set(answered) - set(logged))
    assert lost <= max(20, len(answered) // 10), (lost, len(answered))
