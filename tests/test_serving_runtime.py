"""The real-time model's serving runtime scores as the training pipeline does, or is not chosen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.training import REALTIME_PARAMS, make_model
from propensity import features as F
from propensity.runtime import TOLERANCE, OnnxScorer, PipelineScorer, choose_runtime

FEATURES = F.REALTIME_MODEL_FEATURES


def rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure_days": rng.integers(0, 900, n).astype(float),
            "orders_total": rng.poisson(3, n).astype(float),
            "orders_90d": rng.poisson(1, n).astype(float),
            "revenue_90d": np.round(rng.gamma(2, 40, n), 2),
            "country": rng.choice(["DE", "FR", "US", "unknown"], n),
            "channel": rng.choice(["web", "app", "store"], n),
        }
    )
    frame[F.LABEL] = (rng.random(n) < 1 / (1 + np.exp(-(frame["orders_90d"] - 1)))).astype(int)
    return frame


@pytest.fixture(scope="module")
def model() -> object:
    train = rows(4000, 0)
    return make_model(FEATURES, REALTIME_PARAMS).fit(train[FEATURES], train[F.LABEL])


def serving_columns(frame: pd.DataFrame) -> dict[str, list[object]]:
    """What serving sees: None where the online store and the request know nothing."""
    return {c: [None if pd.isna(v) else v for v in frame[c]] for c in FEATURES}


def test_onnx_scores_equal_the_pipeline_on_thousands_of_rows(model: object) -> None:
    exported, difference = choose_runtime(model, FEATURES, rows(2000, 1))
    assert exported is not None and difference <= TOLERANCE
    test = rows(3000, 2)
    test.loc[test.index[::7], "orders_90d"] = np.nan
    test.loc[test.index[::11], "country"] = "BR"  # never seen in training
    test.loc[test.index[::13], "channel"] = None
    columns = serving_columns(test)
    reference = PipelineScorer(model, FEATURES).score(columns, len(test))
    scores = OnnxScorer(exported, FEATURES).score(columns, len(test))
    assert np.abs(scores - reference).max() <= 1e-6
    assert len(np.unique(scores)) > 100  # not a comparison of constants
    # Missing values are filled as in training.
    filled = F.fill_missing_features(test[FEATURES])
    assert np.array_equal(reference, model.predict_proba(filled)[:, 1])  # type: ignore[attr-defined]


def test_one_row_scores_as_in_a_batch(model: object) -> None:
    exported, _ = choose_runtime(model, FEATURES, rows(500, 3))
    assert exported is not None
    scorer = OnnxScorer(exported, FEATURES)
    columns = serving_columns(rows(50, 4))
    batch = scorer.score(columns, 50)
    single = [scorer.score({c: [v[i]] for c, v in columns.items()}, 1)[0] for i in range(50)]
    assert np.array_equal(batch, np.asarray(single))


def test_a_runtime_that_disagrees_is_not_chosen(model: object) -> None:
    # A split threshold at a value float32 cannot hold: the rows right at it take the other branch.
    train = rows(4000, 5)
    train["revenue_90d"] = np.where(train[F.LABEL] == 1, 100.000001, 100.0000001)
    odd = make_model(FEATURES, REALTIME_PARAMS).fit(train[FEATURES], train[F.LABEL])
    check = rows(500, 6)
    check["revenue_90d"] = np.where(np.arange(500) % 2 == 0, 100.000001, 100.0000001)
    exported, difference = choose_runtime(odd, FEATURES, check)
    assert exported is None and difference > TOLERANCE


def test_models_without_a_converter_are_served_by_their_pipeline() -> None:
    class Opaque:
        def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
            return np.tile([0.5, 0.5], (len(frame), 1))

    exported, difference = choose_runtime(Opaque(), FEATURES, rows(10, 7))
    assert exported is None and difference == float("inf")
