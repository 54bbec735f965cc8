"""The tables on an S3-compatible object store (SeaweedFS, really started on 127.0.0.1), as a cluster
keeps them: the Iceberg warehouse under s3://bucket/prefix, its catalog in PostgreSQL, written by
Spark (Iceberg's S3FileIO) and read by Feast's Spark offline store and by PyIceberg; no table byte on
local disk. A store that refuses the key, or is not there, is one line naming it, and nothing is
written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from components.features import build_training_set, materialize_features
from propensity.catalog import warehouse
from propensity.errors import PropensityError
from propensity.feature_table import FEATURE_SNAPSHOTS
from propensity.lake import CUSTOMERS, TRANSACTIONS, ingest, last_data_date
from propensity.ports import free_port
from propensity.settings import Settings, get_settings
from propensity.synthetic import generate
from propensity.tables import current_snapshot, load_table, scan_batches
from tests.services import MlflowServer, ObjectStore, Postgres

pytestmark = pytest.mark.system
TABLE_FILES = (".parquet", ".avro", ".metadata.json")


@pytest.fixture
def store(object_store_and_mlflow: tuple[ObjectStore, MlflowServer], monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    store = object_store_and_mlflow[0]
    for key, value in store.env.items():
        monkeypatch.setenv(key, value)
    return store


@pytest.fixture
def on_s3(tmp_path: Path, store: ObjectStore, postgres: Postgres, request: pytest.FixtureRequest) -> Iterator[Settings]:
    with postgres.database("tables") as catalog:
        yield get_settings(
            home=tmp_path / "home",
            tables=f"s3://propensity/{request.node.name[:40]}",
            catalog=catalog,
            s3_endpoint_url=store.endpoint,
            s3_region=store.region,
            spark_shuffle_partitions=2,
        )


def write_input(folder: Path, customers: int = 60, days: int = 60) -> tuple[Path, Path]:
    data = generate(customers=customers, days=days, seed=3)
    folder.mkdir(parents=True, exist_ok=True)
    data.transactions.to_parquet(folder / "tx.parquet", index=False)
    data.customers.to_parquet(folder / "customers.parquet", index=False)
    return folder / "tx.parquet", folder / "customers.parquet"


def rows(settings: Settings, name: str) -> int:
    snapshot = current_snapshot(settings, name)
    assert snapshot is not None, name
    return sum(len(batch) for batch in scan_batches(settings, name, 10_000, snapshot_id=snapshot.snapshot_id))


def local_table_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and path.name.endswith(TABLE_FILES)]


def test_the_lake_and_the_feature_table_live_on_the_object_store_only(on_s3: Settings, store: ObjectStore) -> None:
    settings = on_s3
    tx, customers = write_input(settings.home.parent / "input")
    result = ingest(settings, tx, customers)
    as_of = last_data_date(settings)
    built = materialize_features(settings, str(as_of.date()))
    training = settings.home.parent / "artifacts" / "training.parquet"  # a step artifact, not a table
    info = build_training_set(settings, training, str(as_of.date()))

    # Spark wrote them and PyIceberg reads them back, without a JVM, from the store.
    assert rows(settings, TRANSACTIONS) == result.transactions == len(pd.read_parquet(tx))
    assert rows(settings, CUSTOMERS) == len(pd.read_parquet(customers))
    assert rows(settings, FEATURE_SNAPSHOTS) > 0 and built.snapshots_computed > 0
    # Feast's point-in-time join read the feature table through the same catalog.
    assert info.rows > 0 and pd.read_parquet(training)["customer_id"].notna().all()
    prefix = warehouse(settings).removeprefix("s3://propensity/")
    keys = store.keys("propensity", prefix)
    for name in (TRANSACTIONS, CUSTOMERS, FEATURE_SNAPSHOTS):
        assert any(key.startswith(f"{prefix}/propensity/{name}/data/") for key in keys), name
        assert any(key.startswith(f"{prefix}/propensity/{name}/metadata/") for key in keys), name
    assert not any(".write-check-" in key for key in keys)
    # Nothing of a table on local disk: not in the work dir, not beside the input and the artifact.
    assert local_table_files(settings.home) == []
    assert {path.name for path in local_table_files(settings.home.parent)} == {
        "tx.parquet",
        "customers.parquet",
        "training.parquet",
    }

    # Maintenance on the store: a re-ingest replaces every day; once its commits are past the
    # retention, the first ingest's files are deleted from the store (listed with the tables' own
    # file IO, no Hadoop S3 connector) and the tables read the same.
    from datetime import UTC, datetime, timedelta

    from components.maintenance import maintain_tables

    first_files = {key for key in keys if key.startswith(f"{prefix}/propensity/{TRANSACTIONS}/data/")}
    ingest(settings, tx, customers)
    later = datetime.now(UTC) + timedelta(days=settings.table_retention_days + 1)
    done = maintain_tables(settings, now=later)["tables"]
    assert done[TRANSACTIONS]["snapshots_kept"] == 1 and done[TRANSACTIONS]["files_expired"] >= len(first_files)
    assert done[TRANSACTIONS]["orphan_files"] == 0  # nothing unreferenced is three days old here
    assert first_files and not first_files & set(store.keys("propensity", prefix))
    assert rows(settings, TRANSACTIONS) == result.transactions
    assert local_table_files(settings.home) == []


def test_a_store_that_refuses_the_key_is_one_line_and_nothing_is_written(
    on_s3: Settings, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tx, customers = write_input(on_s3.home.parent / "input", customers=20, days=20)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    with pytest.raises(PropensityError) as error:
        ingest(on_s3, tx, customers)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot write the tables at {warehouse(on_s3)}"), message
    assert store.endpoint in message and "not-the-key" not in message
    assert load_table(on_s3, TRANSACTIONS) is None and load_table(on_s3, CUSTOMERS) is None
    assert store.keys("propensity", warehouse(on_s3).removeprefix("s3://propensity/")) == []


def test_a_store_that_is_not_there_is_one_line_naming_it(on_s3: Settings) -> None:
    settings = on_s3.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    tx, customers = write_input(settings.home.parent / "input", customers=20, days=20)
    with pytest.raises(PropensityError) as error:
        ingest(settings, tx, customers)
    message = str(error.value)
    assert "\n" not in message and settings.s3_endpoint_url in message, message
    assert load_table(settings, TRANSACTIONS) is None
