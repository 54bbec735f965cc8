"""The offline feature table and Feast over it: point-in-time correctness (no training row sees its
own future), incremental snapshots, online pushes that never roll back, a capped training set."""

import asyncio
import socket
from pathlib import Path

import pandas as pd
import pytest

from components import features as feature_step
from components.features import build_training_set, materialize_features
from feature_repo.definitions import ONLINE_SERVICE, SCORE_VIEW
from feature_repo.store import feature_store
from propensity import features as F
from propensity.errors import PropensityError
from propensity.feature_table import FEATURE_SNAPSHOTS, computed_snapshots
from propensity.lake import ingest
from propensity.settings import Settings, get_settings
from propensity.tables import load_table
from propensity.training_set import read_training_set
from serving.online import OnlineReader, RedisReader, online_reader
from tests import reference
from tests.test_ingest import lake_customers, lake_transactions


def _ingest(settings: Settings, tmp_path: Path, transactions: pd.DataFrame, customers: pd.DataFrame) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    transactions.to_parquet(tmp_path / "tx.parquet", index=False)
    customers.to_parquet(tmp_path / "customers.parquet", index=False)
    ingest(settings, tmp_path / "tx.parquet", tmp_path / "customers.parquet")


def online_rows(settings: Settings, ids: list[str]) -> dict[str, list[object]]:
    store = feature_store(settings)
    features = store.get_feature_service(ONLINE_SERVICE)
    return store.get_online_features(features=features, entity_rows=[{F.ENTITY: i} for i in ids]).to_dict()


async def read_once(reader: OnlineReader, ids: list[str]) -> dict[str, list[object]]:
    try:
        return await reader.read(ids)
    finally:
        await reader.aclose()


def test_training_set_features_and_labels_never_see_the_future(lake: Settings, tmp_path: Path) -> None:
    # The pipeline's parameters (window, horizon) reach the steps as settings.
    lake = lake.with_values(training_window_days=63, label_horizon_days=14)
    materialize_features(lake)
    result = build_training_set(lake, tmp_path / "training.parquet")
    frame, info = read_training_set(tmp_path / "training.parquet")
    assert result == info and result.rows == len(frame) > 0 and frame[F.EVENT_TIMESTAMP].nunique() == 10
    assert (info.training_window_days, info.label_horizon_days, info.snapshots) == (63, 14, 10)
    assert info.positives == frame[F.LABEL].sum() and info.feature_service == "propensity_training"
    assert set(info.feature_views) == {"customer_activity", "customer_profile"}
    assert str(frame[F.EVENT_TIMESTAMP].min().date()) == info.first_snapshot
    assert str(frame[F.EVENT_TIMESTAMP].max().date()) == info.last_snapshot
    # Nothing is filled: what the join found is what validation sees.
    assert not frame[F.BATCH_MODEL_FEATURES].isna().any().any()

    customers, transactions = lake_customers(lake), lake_transactions(lake)
    for t, rows in frame.groupby(F.EVENT_TIMESTAMP):
        past_only = transactions[transactions["timestamp"] < t]
        expected = reference.activity_features(customers, past_only, [t]).set_index(F.ENTITY)
        got = rows.set_index(F.ENTITY)
        pd.testing.assert_frame_equal(
            got[F.SNAPSHOT_FEATURES].sort_index(),
            expected.loc[got.index, F.SNAPSHOT_FEATURES].sort_index(),
            check_dtype=False,
        )
        # Labels come only from [t, t + horizon): the last labelled date closes by the as-of date.
        window = transactions[
            (transactions["timestamp"] >= t)
            & (transactions["timestamp"] < t + pd.Timedelta(days=lake.label_horizon_days))
        ]
        assert set(got.index[got[F.LABEL] == 1]) == set(window["customer_id"]) & set(got.index)
    as_of = transactions["timestamp"].max().normalize() + pd.Timedelta(days=1)
    assert frame[F.EVENT_TIMESTAMP].max() + pd.Timedelta(days=14) == as_of == pd.Timestamp(info.as_of_date)


def test_changing_the_future_does_not_change_the_past(lake: Settings, tmp_path: Path) -> None:
    materialize_features(lake)
    as_of = build_training_set(lake, tmp_path / "before.parquet").as_of_date
    before = pd.read_parquet(tmp_path / "before.parquet")
    first = before[F.EVENT_TIMESTAMP].min()
    computed_before = computed_snapshots(lake)

    # Re-ingest every day from the first snapshot on with ten times the amounts.
    transactions = lake_transactions(lake).drop(columns="date")
    future = transactions[transactions["timestamp"] >= first].assign(amount=lambda f: f["amount"] * 10)
    _ingest(lake, tmp_path / "rewrite", future, lake_customers(lake))
    # The training snapshots after the first rewritten day are stale now: no training set until they
    # are redone.
    stale = sum(1 for key in computed_before if str(first.date()) < key < as_of)
    with pytest.raises(PropensityError, match=f"not up to date for {stale} snapshot dates"):
        build_training_set(lake, tmp_path / "stale.parquet")
    assert not (tmp_path / "stale.parquet").exists()
    result = materialize_features(lake)
    computed_after = computed_snapshots(lake)
    # Incremental: snapshots up to the first rewritten day are reused, the later ones recomputed.
    assert computed_after[str(first.date())] == computed_before[str(first.date())]
    assert result.snapshots_computed == sum(1 for key in computed_before if key > str(first.date()))

    build_training_set(lake, tmp_path / "after.parquet")
    after = pd.read_parquet(tmp_path / "after.parquet")
    at_first = [F.ENTITY, *F.SNAPSHOT_FEATURES, F.LABEL]
    pd.testing.assert_frame_equal(
        before[before[F.EVENT_TIMESTAMP] == first][at_first].reset_index(drop=True),
        after[after[F.EVENT_TIMESTAMP] == first][at_first].reset_index(drop=True),
    )
    assert not before.equals(after)  # later snapshots did change


def test_a_training_run_records_its_table_snapshots_and_its_training_set_is_rebuilt_after_more_ingest(
    lake: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Time travel: the MLflow run records the snapshot of every table its training set read; after
    the lake changed and the features were recomputed, the same training set is built from them."""
    from dataclasses import replace

    from components.features import rebuild_training_set
    from components.training import train_candidates, training_set_of_run
    from propensity.lake import CUSTOMERS, TRANSACTIONS
    from propensity.tables import current_snapshot

    materialize_features(lake)
    info = build_training_set(lake, tmp_path / "first.parquet")
    assert set(info.table_snapshots) == {TRANSACTIONS, CUSTOMERS, FEATURE_SNAPSHOTS}
    assert all(current_snapshot(lake, name).snapshot_id == sid for name, sid in info.table_snapshots.items())
    run_id = train_candidates(lake, tmp_path / "first.parquet", [{"max_iter": 5}])[0].run_id

    # More data: every day from the first snapshot on rewritten, and new customers; features redone.
    transactions = lake_transactions(lake).drop(columns="date")
    first = pd.Timestamp(info.first_snapshot)
    changed = transactions[transactions["timestamp"] >= first].assign(amount=lambda f: f["amount"] * 3)
    newcomers = changed.head(20).assign(
        customer_id=lambda f: "new-" + f["customer_id"], transaction_id=lambda f: "n" + f["transaction_id"]
    )
    customers = lake_customers(lake)
    joined = (
        newcomers[["customer_id"]]
        .drop_duplicates()
        .assign(signup_date=first - pd.Timedelta(days=1), country="DE", channel="web")
    )
    _ingest(lake, tmp_path / "more", pd.concat([changed, newcomers]), pd.concat([customers, joined]))
    materialize_features(lake)
    now = build_training_set(lake, tmp_path / "now.parquet", info.as_of_date)
    assert not pd.read_parquet(tmp_path / "now.parquet").equals(pd.read_parquet(tmp_path / "first.parquet"))

    recorded = training_set_of_run(lake, run_id)
    assert recorded == info and now.table_snapshots != info.table_snapshots
    again = rebuild_training_set(lake, recorded, tmp_path / "again.parquet")
    assert again == info
    first_frame = pd.read_parquet(tmp_path / "first.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again.parquet"), first_frame)
    # The same from the command line, by run id.
    from propensity.cli import main

    for key, value in lake.as_env().items():
        monkeypatch.setenv(key, value)
    assert main(["training-set", "--run", run_id, "--out", str(tmp_path / "cli.parquet")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cli.parquet"), first_frame)
    # A snapshot no longer kept is one line, and nothing is written.
    gone = replace(info, table_snapshots={**info.table_snapshots, TRANSACTIONS: 1})
    with pytest.raises(PropensityError, match=r"^snapshot 1 of the table transactions is no longer kept"):
        rebuild_training_set(lake, gone, tmp_path / "gone.parquet")
    assert not (tmp_path / "gone.parquet").exists()


def test_maintenance_deletes_stale_snapshots_before_their_lineage_expires(lake: Settings, tmp_path: Path) -> None:
    """Once maintenance expires old commits, when a lake day changed or a snapshot was computed is
    no longer known: the snapshots stale by then are deleted first (and computed again when asked),
    the fresh ones stay fresh, and a change after the expiry makes them stale as before."""
    from datetime import UTC, datetime, timedelta

    from components.maintenance import maintain_tables
    from propensity.feature_table import stale_snapshots
    from propensity.lake import lake_changes

    materialize_features(lake)
    computed = computed_snapshots(lake)
    transactions = lake_transactions(lake).drop(columns="date")
    middle = pd.Timestamp(sorted(computed)[len(computed) // 2])
    last_day = transactions["timestamp"].max().normalize()
    _ingest(lake, tmp_path / "rewrite", transactions[transactions["timestamp"] >= middle], lake_customers(lake))
    # Another ingest after it: the rewrite is no longer the lake's current commit, so it expires.
    _ingest(lake, tmp_path / "last", transactions[transactions["timestamp"] >= last_day], lake_customers(lake))
    dates = [pd.Timestamp(key) for key in computed]
    stale = [str(d.date()) for d in stale_snapshots(lake, dates)]
    assert stale == [key for key in computed if key > str(middle.date())]

    later = datetime.now(UTC) + timedelta(days=lake.table_retention_days + 1)
    done = maintain_tables(lake, now=later)["tables"]

    assert done[FEATURE_SNAPSHOTS]["stale_snapshots_deleted"] == stale
    assert all(table["snapshots_kept"] == 1 for table in done.values())
    # Only the last day's change is known still; when the rewrite changed the others has expired.
    assert [day for day, when in lake_changes(lake).items() if when] == [str(last_day.date())]
    assert set(computed_snapshots(lake)) == set(computed) - set(stale)
    assert stale_snapshots(lake, dates) == [pd.Timestamp(key) for key in stale]
    assert materialize_features(lake).snapshots_computed == len(stale)
    assert stale_snapshots(lake, dates) == []
    # A change after the expiry is known: the snapshots after that day are stale again.
    _ingest(lake, tmp_path / "again", transactions[transactions["timestamp"] >= last_day], lake_customers(lake))
    assert stale_snapshots(lake, dates) == [d for d in dates if d > last_day]


def test_maintenance_runs_once_per_interval(lake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch-scoring runs within `table_maintenance_interval_hours` of a maintenance (a backfill, the
    demo's nights) skip it without starting Spark; it is due again after the interval, or every run
    when the interval is 0. A record from the future does not hold it off."""
    from datetime import UTC, datetime, timedelta

    from components import maintenance
    from propensity.lake import CUSTOMERS, TRANSACTIONS

    assert maintenance.maintain_tables(lake)["tables"]  # first ever: due
    started = maintenance.last_maintained(lake)
    assert started is not None

    def no_spark(*args: object) -> None:
        raise AssertionError("a skipped maintenance started Spark")

    with monkeypatch.context() as mp:
        mp.setattr(maintenance, "spark_session", no_spark)
        soon = started + timedelta(hours=lake.table_maintenance_interval_hours - 0.1)
        skipped = maintenance.maintain_tables(lake, now=soon)
        assert skipped["tables"] == {} and started.isoformat(timespec="seconds") in skipped["skipped"]
        assert maintenance.last_maintained(lake) == started
    due = started + timedelta(hours=lake.table_maintenance_interval_hours)
    assert set(maintenance.maintain_tables(lake, now=due)["tables"]) == {TRANSACTIONS, CUSTOMERS}
    assert maintenance.last_maintained(lake) == due
    every_run = lake.model_copy(update={"table_maintenance_interval_hours": 0})
    assert maintenance.maintain_tables(every_run, now=due + timedelta(minutes=1))["tables"]
    past = datetime.now(UTC) - timedelta(days=1)  # the clock set back: the record is in the future
    assert maintenance.maintain_tables(lake, now=past)["tables"]
    assert maintenance.last_maintained(lake) == past


def test_a_second_run_computes_and_pushes_nothing(lake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """And starts no Spark (the monitoring pipeline materializes the night its scoring already did)."""
    first = materialize_features(lake)

    def no_spark(*_: object) -> None:
        raise AssertionError("a materialization with nothing to compute started Spark")

    monkeypatch.setattr(feature_step, "spark_session", no_spark)
    again = materialize_features(lake)
    assert first.snapshots_computed == first.snapshot_dates and first.online_rows > 0
    assert (again.snapshots_computed, again.online_rows) == (0, 0)


def test_a_new_feature_definition_recomputes_every_snapshot(
    lake: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots outside today's window too: the table must never mix two schemas."""
    narrower = lake.with_values(training_window_days=lake.training_window_days - 28)
    materialize_features(lake)
    before = computed_snapshots(lake)
    assert materialize_features(narrower).snapshots_computed == 0
    monkeypatch.setattr(F, "FEATURE_DEFINITION", F.FEATURE_DEFINITION + ",new_feature")
    result = materialize_features(narrower)
    after = computed_snapshots(lake)
    assert result.snapshots_computed == len(before) > result.snapshot_dates
    assert set(after) == set(before) and all(after[key] > before[key] for key in before)
    assert materialize_features(narrower).snapshots_computed == 0


def test_online_store_serves_the_as_of_snapshot_and_a_backfill_never_rolls_it_back(lake: Settings) -> None:
    result = materialize_features(lake)
    customers, transactions = lake_customers(lake), lake_transactions(lake)
    expected = reference.activity_features(customers, transactions, [pd.Timestamp(result.as_of_date)])
    expected = expected.set_index(F.ENTITY)
    online = online_rows(lake, ["c-0000001", "never-seen"])
    assert online["orders_total"][0] == expected.loc["c-0000001", "orders_total"]
    assert online["days_since_last_order"][0] == expected.loc["c-0000001", "days_since_last_order"]
    assert online["country"][0] == customers.set_index(F.ENTITY).loc["c-0000001", "country"]
    assert online["orders_total"][1] is None and online["score"][0] is None

    # Backfill an older date: its snapshot is computed offline, the online store keeps the newest.
    older = pd.Timestamp(result.as_of_date) - pd.Timedelta(days=60)
    backfill = materialize_features(lake, str(older.date()))
    assert backfill.snapshots_computed >= 1 and backfill.online_rows == 0
    assert online_rows(lake, ["c-0000001"])["days_since_last_order"][0] == online["days_since_last_order"][0]


def test_training_set_is_capped_evenly_across_snapshot_dates(
    lake: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    materialize_features(lake)
    full = build_training_set(lake, tmp_path / "full.parquet")
    monkeypatch.setenv("PROPENSITY_TRAINING_MAX_ROWS", str(full.rows // 4))
    capped_settings = get_settings()
    capped = build_training_set(capped_settings, tmp_path / "capped.parquet")
    assert capped.rows_before_cap == full.rows
    assert 0.15 * full.rows < capped.rows < 0.35 * full.rows
    full_share = pd.read_parquet(tmp_path / "full.parquet")[F.EVENT_TIMESTAMP].value_counts(normalize=True)
    capped_share = pd.read_parquet(tmp_path / "capped.parquet")[F.EVENT_TIMESTAMP].value_counts(normalize=True)
    assert set(capped_share.index) == set(full_share.index)
    assert (capped_share - full_share).abs().max() < 0.05


def test_a_parallel_push_to_redis_serves_exactly_what_the_sqlite_push_serves(lake: Settings, redis_db: str) -> None:
    """Redis is written from Spark partitions, SQLite from the driver: Feast must read the same."""
    on_redis = get_settings(home=lake.home, online_store="redis", redis_connection=redis_db)
    local, remote = materialize_features(lake), materialize_features(on_redis)
    assert remote.online_rows == local.online_rows > 0 and remote.snapshots_computed == 0
    ids = [*lake_customers(lake)[F.ENTITY].head(150), "never-seen"]
    assert online_rows(on_redis, ids) == online_rows(lake, ids)
    assert online_rows(on_redis, ids)["orders_total"][0] is not None
    # The predictor's one-read-per-request readers return exactly what Feast returns, scores included.
    scores = pd.DataFrame(
        {
            F.ENTITY: ids[:40],
            F.EVENT_TIMESTAMP: pd.Timestamp("2026-01-01", tz="UTC"),
            "score": [i / 40 for i in range(40)],
            "model_version": "7",
            "scored_at": "2026-01-01T03:00:00+00:00",
        }
    )
    for settings in (lake, on_redis):
        feature_store(settings).write_to_online_store(SCORE_VIEW, scores)
        expected = online_rows(settings, ids)
        assert expected["score"][1] == 1 / 40 and expected["score"][-1] is None
        reader = online_reader(feature_store(settings))
        assert isinstance(reader, RedisReader) == (settings is on_redis)
        for subset in (ids, ids[:1], ids[-1:]):
            got = asyncio.run(read_once(reader, subset))
            assert got == {name: [values[ids.index(i)] for i in subset] for name, values in expected.items()}


def test_an_unreachable_redis_is_named_and_nothing_is_written(lake: Settings) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"
    on_redis = lake.model_copy(update={"online_store": "redis", "redis_connection": address})
    with pytest.raises(PropensityError, match=f"cannot reach the Redis online store at {address}"):
        materialize_features(on_redis)
    assert computed_snapshots(lake) == {} and load_table(lake, FEATURE_SNAPSHOTS) is None
