"""The whole loop (train, score, serve, drift, retrain) with settings that point only at the
cluster's services, really started on 127.0.0.1: an S3-compatible object store (SeaweedFS), an
`mlflow server` on PostgreSQL with its artifacts in that store, the Feast registry in PostgreSQL,
Redis as the online store, and a Spark standalone master and worker in their own JVMs.

`propensity demo` runs as a user would start it, in a process of its own, from an empty work dir.
Every Spark table is an Iceberg table on the object store, its catalog a PostgreSQL database: no
path is shared between the driver and the executors. One stand-in remains, because this machine
cannot run what it stands for: kfp.local keeps step artifacts in a local folder outside the work dir
(KFP's own artifact store on a cluster). Everything else goes through the services, and the test
proves that nothing but logs was written to the work dir and no table byte to the local disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.services import MlflowServer, ObjectStore, Postgres, Redis, SparkCluster

pytestmark = [pytest.mark.system, pytest.mark.integration, pytest.mark.timeout(4800)]
# Small, and no rescoring after retraining; two nights of scoring and monitoring, then retraining and
# a deploy, take about 30 minutes on 2 cores (up to half as long again beside `make test` in CI).
CUSTOMERS, DAYS = 1000, 480
KNOWN_REQUESTS, NEW_REQUESTS = 120, 60  # the demo's defaults
TABLES = "loop-tables"  # the tables' prefix in the bucket


@dataclass(frozen=True)
class Loop:
    summary: dict[str, Any]
    env: dict[str, str]
    home: Path
    root: Path
    store: ObjectStore
    executor_logs: list[Path]
    redis_keys: int


@pytest.fixture(scope="module")
def loop(
    tmp_path_factory: pytest.TempPathFactory,
    object_store_and_mlflow: tuple[ObjectStore, MlflowServer],
    spark_cluster: SparkCluster,
    postgres: Postgres,
    redis_service: Redis,
) -> Iterator[Loop]:
    root = tmp_path_factory.mktemp("loop")
    connection = redis_service.connection(db=11)
    store, mlflow = object_store_and_mlflow
    with postgres.database("feast") as registry, postgres.database("catalog") as catalog:
        env = {
            **os.environ,
            **store.env,
            "PROPENSITY_HOME": str(root / "home"),
            "PROPENSITY_TABLES": f"s3://propensity/{TABLES}",
            "PROPENSITY_STORAGE": "s3://propensity/loop",
            "PROPENSITY_S3_ENDPOINT_URL": store.endpoint,
            "PROPENSITY_S3_REGION": store.region,
            "PROPENSITY_MLFLOW_TRACKING_URI": mlflow.url,
            "PROPENSITY_FEAST_REGISTRY": registry,
            "PROPENSITY_CATALOG": catalog,  # the Iceberg catalog of the Spark tables
            "PROPENSITY_ONLINE_STORE": "redis",
            "PROPENSITY_REDIS_CONNECTION": connection,
            "PROPENSITY_SPARK_MASTER": spark_cluster.master,
            "PROPENSITY_SPARK_DRIVER_HOST": "127.0.0.1",
            "PROPENSITY_SPARK_EXECUTOR_MEMORY": "1g",
            "PROPENSITY_KFP_PIPELINE_ROOT": str(root / "kfp-artifact-store"),
            "SPARK_LOCAL_IP": "127.0.0.1",
        }
        env = {k: v for k, v in env.items() if k != "PROPENSITY_CONFIG"}
        command = [
            sys.executable,
            "-m",
            "propensity.cli",
            "demo",
            "--customers",
            str(CUSTOMERS),
            "--days",
            str(DAYS),
            "--no-rescore",
        ]
        # A process group of its own: if the test gives up, the demo's server and steps go too.
        process = subprocess.Popen(
            [*command, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=4600)
        finally:  # whatever is left of the group (nothing, after a clean run)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        demo = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        (root / "demo.out").write_text(demo.stdout)  # beside the services' logs, for a failed run
        assert demo.returncode == 0, demo.stderr[-4000:]
        keys = redis_service.client(db=11).dbsize()
        yield Loop(
            json.loads(demo.stdout),
            env,
            root / "home",
            root,
            store,
            sorted(spark_cluster.work_dir.glob("app-*/*/stderr")),
            int(keys),
        )


def test_the_loop_trains_scores_serves_detects_drift_and_retrains(loop: Loop) -> None:
    s = loop.summary
    assert s["training"]["decision"] == "promote" and s["training"]["auc"] > 0.6
    assert s["batch_scoring"]["rows_scored"] == s["batch_scoring"]["latest_rows"] > 0
    serving = s["serving"]
    assert serving["errors"] == 0 and serving["malformed_request_status"] == 400
    assert (serving["batch_hits"], serving["realtime_hits"]) == (KNOWN_REQUESTS, NEW_REQUESTS)
    assert s["monitoring"]["drift_detected"] and s["monitoring"]["retrain_triggered"]
    assert int(s["retraining"]["model_version"]) > int(s["training"]["model_version"])
    expected = s["retraining"]["model_version"] if s["retraining"]["decision"] == "promote" else None
    assert s["champion_version"] == (expected or s["training"]["model_version"])
    if expected:  # deployed to the running server, which swapped it in and passed its smoke requests
        assert s["deployment"]["outcome"] == "deployed" and s["deployment"]["batch_version"] == expected
        assert ", 0 failed" in s["deployment"]["detail"]
    assert s["batch_scoring_after_retraining"] is None


def test_every_record_went_to_the_services(loop: Loop) -> None:
    from propensity.settings import get_settings
    from propensity.storage import Storage
    from serving.inference_log import read_records

    keys = set(loop.store.keys("propensity", "loop/"))
    assert "loop/reports/demo-summary.json" in keys
    assert any(k.startswith("loop/feature_store/online_pushes-redis-") for k in keys)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in loop.env.items():
            mp.setenv(name, value)
        storage = Storage(get_settings())
        history = storage.read_json("state/retraining.json")
        # Night one of the drifted data records its checks; night two retrains (2 of the last 3).
        assert [r["status"] for r in history] == ["not_needed", "succeeded"]
        records = read_records(storage)
        checks = set(storage.keys("monitoring/checks"))
        accuracy = storage.read_json("monitoring/realised_accuracy.json")
    assert len(records) == KNOWN_REQUESTS + NEW_REQUESTS + loop.summary["serving"]["traffic_instances"]
    assert len(checks) == 8  # four checks, two nights, each one object on the store
    assert {p["segment"] for p in accuracy} >= {"all"} and loop.summary["realised_accuracy"]["plot"].startswith("s3://")
    assert {r["source"] for r in records} == {"batch", "realtime"}
    # Both trainings' models went through the MLflow server into the bucket.
    models = {k for k in loop.store.keys("mlflow") if k.endswith("/artifacts/MLmodel")}
    assert len(models) >= 4
    assert loop.redis_keys >= CUSTOMERS
    # The Spark work ran in the standalone cluster's executors (ingest twice, features, scoring, pushes).
    assert len(loop.executor_logs) >= 6


def test_nothing_but_logs_was_written_to_the_work_dir(loop: Loop) -> None:
    written = sorted(
        str(p.relative_to(loop.home))
        for p in loop.home.rglob("*")
        if p.is_file() and p.relative_to(loop.home).parts[0] != "logs"
    )
    assert written == [".propensity-demo"]
    assert (loop.home / "logs" / "pipelines.log").is_file()


def test_every_table_is_on_the_object_store_and_none_on_the_local_disk(loop: Loop) -> None:
    assert loop.env["PROPENSITY_TABLES"].startswith("s3://")  # no shared path configured
    prefix = f"{TABLES}/warehouse/propensity/"
    keys = loop.store.keys("propensity", prefix)
    tables = {key.removeprefix(prefix).split("/")[0] for key in keys}
    assert tables == {"customers", "transactions", "feature_snapshots", "historic_scores", "latest_scores"}
    for table in tables:
        assert any(key.startswith(f"{prefix}{table}/data/") and key.endswith(".parquet") for key in keys), table
    # Not a data file, manifest or metadata file of a table anywhere on this machine's side of the
    # test (work dir, kfp.local's artifacts, the services' folders), and no embedded catalog.
    local = [p for p in loop.root.rglob("*") if p.is_file() and p.name.endswith((".avro", ".metadata.json"))]
    assert local == [] and not list(loop.root.rglob("catalog.db")) and not list(loop.root.rglob("warehouse"))


def test_features_the_spark_cluster_computed_equal_the_reference(loop: Loop) -> None:
    """The executors of the standalone cluster computed the newest snapshot exactly as the simplest
    pandas code does."""
    import pandas as pd

    from propensity import features as F
    from propensity.feature_table import computed_snapshots, feature_snapshot
    from propensity.settings import get_settings
    from propensity.tables import scan_batches
    from tests import reference
    from tests.test_ingest import lake_customers, lake_transactions

    with pytest.MonkeyPatch.context() as mp:
        for name, value in loop.env.items():  # the object store's keys, read by PyIceberg
            mp.setenv(name, value)
        settings = get_settings()  # the demo's: tables on the object store, catalog in PostgreSQL
        as_of = pd.Timestamp(max(computed_snapshots(settings)))
        expected = reference.activity_features(lake_customers(settings), lake_transactions(settings), [as_of])
        snapshot = feature_snapshot(settings, as_of)
        batches = scan_batches(settings, snapshot.name, 10**6, None, snapshot.snapshot_id, snapshot.partition)
        got = pd.concat(batches)
    assert len(got) > CUSTOMERS / 2
    # The same customers, each once, before the same values: a dropped or repeated one fails here.
    assert got[F.ENTITY].is_unique and set(got[F.ENTITY]) == set(expected[F.ENTITY])
    pd.testing.assert_frame_equal(
        got.set_index(F.ENTITY)[F.SNAPSHOT_FEATURES].sort_index(),
        expected.set_index(F.ENTITY)[F.SNAPSHOT_FEATURES].sort_index(),
        check_dtype=False,
    )
