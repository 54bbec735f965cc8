"""Pure logic of training and the promotion gate; the real fits run in the integration test."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.registry import PROMOTE, REJECT, GateRules, auc_difference, decide
from components.training import (
    Candidate,
    coerce_params,
    evaluate_scores,
    make_model,
    select_best,
    split_by_time,
    train_candidates,
)
from components.validation import validate_training_set
from propensity import features as F
from propensity.settings import Settings


def _frame(n_dates: int = 12, per_date: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2025-01-05", periods=n_dates, freq="7D")
    n = n_dates * per_date
    orders_90d = rng.integers(0, 6, n)
    frame = pd.DataFrame(
        {
            F.ENTITY: [f"c-{i % per_date}" for i in range(n)],
            F.EVENT_TIMESTAMP: np.repeat(dates, per_date),
            "tenure_days": rng.uniform(0, 500, n),
            "orders_total": orders_90d + rng.integers(1, 4, n),
            "orders_30d": np.minimum(orders_90d, rng.integers(0, 3, n)),
            "orders_90d": orders_90d,
            "revenue_30d": orders_90d * 10.0,
            "revenue_90d": orders_90d * 50.0,
            "avg_order_value": rng.uniform(10, 100, n),
            "avg_items": rng.uniform(1, 3, n),
            "days_since_last_order": rng.uniform(0, 200, n),
            "country": rng.choice(["DE", "FR"], n),
            "channel": rng.choice(["web", "app"], n),
        }
    )
    frame[F.LABEL] = (rng.random(n) < 0.2 + 0.1 * orders_90d).astype(int)
    return frame


def test_split_by_time_never_mixes_dates() -> None:
    split = split_by_time(_frame())
    assert split.train[F.EVENT_TIMESTAMP].max() < split.valid[F.EVENT_TIMESTAMP].min()
    assert split.valid[F.EVENT_TIMESTAMP].max() < split.test[F.EVENT_TIMESTAMP].min()
    assert len(split.train) + len(split.valid) + len(split.test) == len(_frame())


def test_split_needs_three_dates() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        split_by_time(_frame(n_dates=2))


def test_model_learns_signal() -> None:
    split = split_by_time(_frame(per_date=200))
    model = make_model(F.BATCH_MODEL_FEATURES, {"max_iter": 50, "max_depth": 3})
    model.fit(split.train[F.BATCH_MODEL_FEATURES], split.train[F.LABEL])
    scores = model.predict_proba(split.test[F.BATCH_MODEL_FEATURES])[:, 1]
    evaluation = evaluate_scores(split.test[F.LABEL], scores, split.test["country"])
    assert evaluation.auc > 0.6
    assert set(evaluation.segment_auc) == {"DE", "FR"}


def test_coerce_params_restores_integers() -> None:
    assert coerce_params({"max_iter": 100.0, "learning_rate": 0.1}) == {"max_iter": 100, "learning_rate": 0.1}


def test_select_best_prefers_higher_validation_auc() -> None:
    best = select_best([Candidate("r1", 0.7, {}), Candidate("r2", 0.75, {}), Candidate("r3", 0.72, {})])
    assert best.run_id == "r2"
    with pytest.raises(ValueError):
        select_best([])


def test_candidates_share_one_read_of_the_training_set(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "training.parquet"
    _frame(per_date=100).to_parquet(path, index=False)
    reads: list[object] = []
    read_parquet = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda *a, **k: reads.append(a) or read_parquet(*a, **k))
    trained = train_candidates(settings, path, [{"max_iter": 10}, {"max_iter": 20, "max_depth": 2}])
    assert len(reads) == 1
    assert [c.params for c in trained] == [{"max_iter": 10}, {"max_iter": 20, "max_depth": 2}]
    assert len({c.run_id for c in trained}) == 2 and all(0.5 < c.valid_auc <= 1 for c in trained)


@pytest.mark.parametrize("candidates", [[], [{"max_iter": 10}, "fast"]])
def test_candidates_must_be_parameter_mappings(settings: Settings, tmp_path: Path, candidates: list) -> None:
    with pytest.raises(ValueError, match="candidates must be a non-empty list"):
        train_candidates(settings, tmp_path / "never-read.parquet", candidates)


RULES = GateRules(min_auc=0.6, min_improvement=0.0, confidence=0.95, min_segment_rows=200, segment_tolerance=0.02)


def scored(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a signal that predicts them, and a country per row."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    signal = labels + rng.normal(0, 1.0, n)
    return labels, signal, rng.choice(np.array(["DE", "FR", "US"]), n)


def noisier(signal: np.ndarray, scale: float, seed: int = 1) -> np.ndarray:
    return signal + np.random.default_rng(seed).normal(0, scale, len(signal))


def test_the_gate_applies_the_floor_and_promotes_a_first_model() -> None:
    labels, signal, countries = scored()
    assert decide(labels, noisier(signal, 20.0), None, countries, RULES)[0] == REJECT  # AUC near 0.5
    decision, reason = decide(labels, signal, None, countries, RULES)
    assert decision == PROMOTE and "no champion yet" in reason


def test_a_tie_never_promotes() -> None:
    labels, signal, countries = scored()
    decision, reason = decide(labels, signal, signal.copy(), countries, RULES)
    assert decision == REJECT and "difference +0.0000" in reason


def test_a_gain_within_the_noise_does_not_promote_and_a_clear_one_does() -> None:
    labels, signal, countries = scored()
    champion = noisier(signal, 0.5)
    slightly = noisier(signal, 0.49, seed=2)  # a hair better on paper, indistinguishable in fact
    assert decide(labels, slightly, champion, countries, RULES)[0] == REJECT
    decision, reason = decide(labels, signal, champion, countries, RULES)
    assert decision == PROMOTE and "lower bound +" in reason
    demanding = GateRules(**{**RULES.__dict__, "min_improvement": 0.2})
    assert decide(labels, signal, champion, countries, demanding)[0] == REJECT


def test_a_segment_that_regresses_blocks_promotion_unless_it_is_too_small() -> None:
    labels, signal, countries = scored()
    champion = noisier(signal, 1.2)
    challenger = signal.copy()
    french = countries == "FR"
    challenger[french] = noisier(signal, 2.0)[french]  # clearly better overall, much worse in FR
    decision, reason = decide(labels, challenger, champion, countries, RULES)
    assert decision == REJECT and "country FR" in reason
    lenient = GateRules(**{**RULES.__dict__, "min_segment_rows": int(french.sum()) + 1})
    assert decide(labels, challenger, champion, countries, lenient)[0] == PROMOTE


def test_delong_standard_error_matches_the_bootstrap() -> None:
    from sklearn.metrics import roc_auc_score

    labels, signal, _ = scored(3000)
    a, b = noisier(signal, 0.8), noisier(signal, 1.0, seed=3)
    difference, error = auc_difference(labels, a, b)
    assert difference == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b), abs=1e-12)
    rng = np.random.default_rng(4)
    draws = []
    for _ in range(300):
        i = rng.integers(0, len(labels), len(labels))
        draws.append(roc_auc_score(labels[i], a[i]) - roc_auc_score(labels[i], b[i]))
    assert error == pytest.approx(float(np.std(draws)), rel=0.2)


def test_only_a_challenger_that_passed_the_gate_gets_the_alias(settings: Settings) -> None:
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from components.registry import Decision, register_models
    from propensity.tracking import CHALLENGER, alias_version, configure

    experiment = configure(settings)
    runs = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.sklearn.log_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="model")
        runs.append(run.info.run_id)
    rejected = register_models(settings, *runs, Decision(REJECT, "tie with the champion", 0.8, 0.8, "1"))
    assert alias_version(settings, settings.model_name, CHALLENGER) is None
    tags = MlflowClient().get_model_version(settings.model_name, rejected.batch.version).tags
    assert (tags["decision"], tags["decision_reason"]) == (REJECT, "tie with the champion")
    passed = register_models(settings, *runs, Decision(PROMOTE, "significantly better", 0.9, 0.8, "1"))
    challenger = alias_version(settings, settings.model_name, CHALLENGER)
    assert challenger is not None and challenger.version == passed.batch.version


def test_validation_gate_passes_good_and_names_what_is_wrong() -> None:
    good = _frame()
    assert validate_training_set(good).success
    bad = good.copy()
    bad.loc[0, "orders_total"] = -1
    bad.loc[1, "country"] = None
    result = validate_training_set(bad)
    assert not result.success
    assert any("orders_total" in f for f in result.failed) and any("country" in f for f in result.failed)
    assert "FAILED" in result.markdown()


def test_validation_rejects_a_broken_label_rate() -> None:
    frame = _frame().assign(label=0)
    assert not validate_training_set(frame).success
