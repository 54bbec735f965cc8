"""Point-in-time correctness through the real Feast store: no training row sees its own future."""

from pathlib import Path

import pandas as pd
import pytest

from components.features import build_training_set, materialize_features
from feature_repo.definitions import ONLINE_SERVICE
from feature_repo.store import feature_store
from propensity import features as F
from propensity.lake import write_lake
from propensity.settings import Settings
from propensity.synthetic import generate


@pytest.fixture
def lake(settings: Settings) -> Settings:
    data = generate(customers=400, days=150, seed=11)
    write_lake(settings, data.customers, data.transactions)
    return settings


def test_training_set_features_and_labels_never_see_the_future(lake: Settings, tmp_path: Path) -> None:
    materialize_features(lake)
    result = build_training_set(lake, tmp_path / "training.parquet")
    frame = pd.read_parquet(tmp_path / "training.parquet")
    assert result.rows == len(frame) > 0 and frame[F.EVENT_TIMESTAMP].nunique() > 3

    customers = pd.read_parquet(lake.customers_path)
    transactions = pd.read_parquet(lake.transactions_path)
    for t, rows in frame.groupby(F.EVENT_TIMESTAMP):
        past_only = transactions[transactions["timestamp"] < t]
        expected = F.activity_features(customers, past_only, [t]).set_index(F.ENTITY)
        got = rows.set_index(F.ENTITY)
        pd.testing.assert_frame_equal(
            got[F.ACTIVITY_FEATURES].sort_index(),
            expected.loc[got.index, F.ACTIVITY_FEATURES].sort_index(),
            check_dtype=False,
        )
        # Labels come only from [t, t + horizon): the last labelled date closes by the as-of date.
        window = transactions[
            (transactions["timestamp"] >= t)
            & (transactions["timestamp"] < t + pd.Timedelta(days=lake.label_horizon_days))
        ]
        assert set(got.index[got[F.LABEL] == 1]) == set(window["customer_id"]) & set(got.index)
    as_of = transactions["timestamp"].max().normalize() + pd.Timedelta(days=1)
    assert frame[F.EVENT_TIMESTAMP].max() + pd.Timedelta(days=lake.label_horizon_days) <= as_of


def test_changing_the_future_does_not_change_the_past(lake: Settings, tmp_path: Path) -> None:
    materialize_features(lake)
    build_training_set(lake, tmp_path / "before.parquet")
    before = pd.read_parquet(tmp_path / "before.parquet")
    first = before[F.EVENT_TIMESTAMP].min()

    transactions = pd.read_parquet(lake.transactions_path)
    transactions.loc[transactions["timestamp"] >= first, "amount"] *= 10  # rewrite everything after t0
    write_lake(lake, pd.read_parquet(lake.customers_path), transactions)
    materialize_features(lake)
    build_training_set(lake, tmp_path / "after.parquet")
    after = pd.read_parquet(tmp_path / "after.parquet")
    at_first = [F.ENTITY, *F.ACTIVITY_FEATURES, F.LABEL]
    pd.testing.assert_frame_equal(
        before[before[F.EVENT_TIMESTAMP] == first][at_first].reset_index(drop=True),
        after[after[F.EVENT_TIMESTAMP] == first][at_first].reset_index(drop=True),
    )
    assert not before.equals(after)  # later snapshots did change


def test_online_store_serves_the_as_of_snapshot(lake: Settings) -> None:
    result = materialize_features(lake)
    store = feature_store(lake)
    online = store.get_online_features(
        features=store.get_feature_service(ONLINE_SERVICE),
        entity_rows=[{F.ENTITY: "c-0000001"}, {F.ENTITY: "never-seen"}],
    ).to_dict()
    customers = pd.read_parquet(lake.customers_path)
    transactions = pd.read_parquet(lake.transactions_path)
    expected = F.activity_features(customers, transactions, [pd.Timestamp(result.as_of_date)]).set_index(F.ENTITY)
    assert online["orders_total"][0] == expected.loc["c-0000001", "orders_total"]
    assert online["country"][0] == customers.set_index(F.ENTITY).loc["c-0000001", "country"]
    assert online["orders_total"][1] is None and online["score"][0] is None
