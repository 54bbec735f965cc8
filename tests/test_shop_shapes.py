"""Training on the shapes real shops come in, through the training pipeline's step functions (fit the
candidates and baselines, select, evaluate, train the real-time model, gate, register): a
transactions-only shop (no country or channel), no new customer in the test window, one country,
few buyers, a short history, a long one. Each gives a registered decision, or a refusal in one line
that says why; never a library's traceback.

The training sets are drawn from a purchase process (each customer buys at a rate of their own and
may lapse), shaped as `build_training_set` writes them; the lake-to-training-set path has its own
tests (test_feature_store, test_integration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.candidates import BASELINES
from components.registry import PROMOTE, REJECT, compare_with_champion, register_models
from components.training import evaluate_run, select_best, train_candidates, train_realtime_model
from propensity import features as F
from propensity.errors import PropensityError
from propensity.settings import Settings, get_settings
from tests.test_training_logic import written

SMALL_LEARNER = {"max_iter": 30, "max_leaf_nodes": 7}


@dataclass(frozen=True)
class Shape:
    snapshots: int  # weekly snapshot dates
    customers: int
    buyer_rate: float  # scales every customer's purchase rate: few buyers when small
    countries: int  # 0: a transactions-only shop (no customers file), every profile field unknown
    lapsed_share: float  # customers with no purchase within the active window: 0 means no new customer
    horizon: int = 30
    recency_only: bool = False  # the label follows recency alone: a simple model is the right one


def shop(shape: Shape, seed: int = 0) -> pd.DataFrame:
    """One row per customer and weekly snapshot, with a label that follows each customer's own rate."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2024-01-07", periods=shape.snapshots, freq="7D")
    rate = rng.gamma(0.6, 1.0, shape.customers) * shape.buyer_rate  # purchases per 30 days
    lapsed = rng.random(shape.customers) < shape.lapsed_share
    countries = ["DE", "FR", "US"][: max(shape.countries, 1)]
    country = rng.choice(countries, shape.customers) if shape.countries else np.full(shape.customers, F.UNKNOWN)
    channel = rng.choice(["web", "app"], shape.customers) if shape.countries else np.full(shape.customers, F.UNKNOWN)
    frames = []
    for t in dates:
        n = shape.customers
        recency = np.where(lapsed, rng.uniform(F.ACTIVE_WINDOW_DAYS + 1, 700, n), rng.exponential(30 / (rate + 0.05)))
        recency = np.where(lapsed, recency, np.minimum(recency, F.ACTIVE_WINDOW_DAYS - 5))
        orders_90d = np.where(lapsed, 0, rng.poisson(rate * 3))
        if shape.recency_only:
            chance = 1 / (1 + np.exp((recency - 60) / 25)) * min(shape.buyer_rate, 1.0)
        else:
            chance = np.where(lapsed, 0.02, 1 - np.exp(-rate * shape.horizon / 30))
        frames.append(
            pd.DataFrame(
                {
                    F.ENTITY: [f"c-{i}" for i in range(n)],
                    F.EVENT_TIMESTAMP: t,
                    "tenure_days": recency + rng.uniform(0, 300, n),
                    "orders_total": orders_90d + rng.poisson(1 + rate),
                    "orders_30d": rng.binomial(orders_90d, 1 / 3),
                    "orders_90d": orders_90d,
                    "revenue_30d": orders_90d * 12.0,
                    "revenue_90d": orders_90d * 40.0,
                    "avg_order_value": rng.gamma(2, 20, n),
                    "avg_items": rng.uniform(1, 3, n),
                    "days_since_last_order": recency,
                    "orders_prev_90d": rng.poisson(rate * 3),
                    "purchase_interval_days": 30 / (rate + 0.05),
                    "interval_cv": rng.uniform(0, 2, n),
                    "recency_ratio": recency * (rate + 0.05) / 30,
                    "season_sin": np.sin(t.dayofyear / 58),
                    "season_cos": np.cos(t.dayofyear / 58),
                    "country": country,
                    "channel": channel,
                    F.LABEL: (rng.random(n) < chance).astype(int),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class Trained:
    decision: str
    reason: str
    markdown: str
    evaluation: str
    selected: str


def train_on(shape: Shape, home: Path, seed: int = 0) -> Trained:
    """The training pipeline's steps after the training set, as its components call them."""
    settings = get_settings(home=home)
    path = written(shop(shape, seed), home / "training.parquet", shape.horizon)
    best = select_best(train_candidates(settings, path, [SMALL_LEARNER], "shape-test"))
    evaluation, _ = evaluate_run(settings, path, best.run_id)
    realtime = train_realtime_model(settings, path, "shape-test")
    decision, report = compare_with_champion(settings, path, best.run_id, realtime)
    assert "<html" in report.lower()
    register_models(settings, best.run_id, realtime, decision)
    return Trained(decision.decision, decision.reason, decision.markdown(), evaluation.markdown(), evaluation.model)


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message.strip() and len(message) < 600


shapes = st.builds(
    Shape,
    # Weekly snapshots: a month (refused: no room for two embargoes), four months, seven, one year, two.
    snapshots=st.sampled_from([4, 16, 30, 52, 104]),
    customers=st.integers(20, 120),
    buyer_rate=st.sampled_from([0.005, 0.03, 0.2, 1.0]),
    countries=st.integers(0, 3),
    lapsed_share=st.sampled_from([0.0, 0.0, 0.1, 0.4]),
    horizon=st.sampled_from([30, 90]),
)


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@pytest.mark.slow
@given(shape=shapes)
def test_every_shop_shape_gets_a_decision_or_a_one_line_refusal(
    shape: Shape, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("shape")
    try:
        trained = train_on(shape, home)
    except (ValueError, PropensityError) as refusal:
        assert one_line(str(refusal)), (shape, str(refusal)[:800])
        known = ("leave no training period", "holds no buyer", "holds only buyers", "snapshot date(s)")
        assert any(reason in str(refusal) for reason in known), (shape, str(refusal))
        return
    assert trained.decision in (PROMOTE, REJECT) and trained.reason, shape
    assert trained.selected, shape


@pytest.mark.slow
def test_a_shop_without_new_customers_in_the_test_window_gets_a_champion(settings: Settings) -> None:
    """Every customer bought within the active window (a real shop's transactions, every customer
    signed up in the first quarter): the real-time model is judged on the stated proxy."""
    shape = Shape(snapshots=30, customers=150, buyer_rate=0.3, countries=0, lapsed_share=0.0)
    trained = train_on(shape, settings.home)
    assert trained.decision == PROMOTE, trained.markdown
    assert "a proxy: the test window holds no new customer" in trained.markdown
    assert "on every customer (proxy)" in trained.reason


@pytest.mark.slow
def test_a_shop_whose_signal_is_recency_alone_ships_the_simple_model_and_says_so(settings: Settings) -> None:
    shape = Shape(snapshots=24, customers=120, buyer_rate=0.6, countries=3, lapsed_share=0.0, recency_only=True)
    trained = train_on(shape, settings.home, seed=3)
    assert trained.selected in BASELINES.values(), trained.evaluation
    assert f"The model is the baseline **{trained.selected}**" in trained.evaluation
    assert f"{trained.selected} (a baseline: it beat every learner on the validation rows)" in trained.markdown


def test_a_period_without_buyers_is_refused_in_one_line(settings: Settings) -> None:
    shape = Shape(snapshots=12, customers=30, buyer_rate=0.0, countries=1, lapsed_share=0.0)
    with pytest.raises(ValueError, match="holds no buyer: no model can be fitted or judged on one class") as refused:
        train_on(shape, settings.home)
    assert one_line(str(refused.value))


@pytest.mark.slow
def test_a_transactions_only_shop_trains_from_ingest_to_registry(settings: Settings, tmp_path: Path) -> None:
    """The whole path a real shop's transactions take: no customers file (no country, no channel),
    every customer bought within the active window, through ingest, the feature table, Feast's
    point-in-time training set, Great Expectations and the training steps, to a registered decision."""
    from components.features import build_training_set, materialize_features
    from components.validation import validate_data
    from propensity.lake import ingest
    from propensity.synthetic import generate

    data = generate(customers=400, days=300, seed=5)
    data.transactions[["customer_id", "timestamp", "amount"]].to_csv(tmp_path / "tx.csv", index=False)
    ingest(settings, tmp_path / "tx.csv", None)
    settings = settings.with_values(training_window_days=180)
    materialize_features(settings)
    path = tmp_path / "training.parquet"
    info = build_training_set(settings, path)
    frame = pd.read_parquet(path)
    assert set(frame["country"]) == {F.UNKNOWN} and F.new_customers(frame).empty, info
    assert validate_data(settings, path).success
    best = select_best(train_candidates(settings, path, [SMALL_LEARNER], "transactions-only"))
    realtime = train_realtime_model(settings, path, "transactions-only")
    decision, _ = compare_with_champion(settings, path, best.run_id, realtime)
    assert decision.decision == PROMOTE, decision.markdown()
    assert "a proxy: the test window holds no new customer" in decision.markdown()
    register_models(settings, best.run_id, realtime, decision)
