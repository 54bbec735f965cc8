"""Pure logic of training and the promotion gate; the real fits run in the integration test."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components.candidates import BASELINES
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
from propensity import features as F
from propensity.settings import Settings
from propensity.training_set import TrainingSetInfo, write_training_set

HORIZON = 30


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
            "orders_prev_90d": rng.integers(0, 6, n),
            "purchase_interval_days": rng.uniform(5, 200, n),
            "interval_cv": rng.uniform(0, 2, n),
            "recency_ratio": rng.uniform(0, 5, n),
            "country": rng.choice(["DE", "FR"], n),
            "channel": rng.choice(["web", "app"], n),
        }
    )
    angle = 2 * np.pi * frame[F.EVENT_TIMESTAMP].dt.dayofyear / F.DAYS_PER_YEAR
    frame["season_sin"], frame["season_cos"] = np.sin(angle), np.cos(angle)
    frame[F.LABEL] = (rng.random(n) < 0.2 + 0.1 * orders_90d).astype(int)
    return frame


def info_for(frame: pd.DataFrame, horizon: int = HORIZON) -> TrainingSetInfo:
    """The lineage build_training_set would write for `frame`."""
    dates = frame[F.EVENT_TIMESTAMP]
    last = dates.max()
    return TrainingSetInfo(
        as_of_date=str((last + pd.Timedelta(days=horizon)).date()),
        training_window_days=int((last - dates.min()).days),
        label_horizon_days=horizon,
        snapshot_every_days=7,
        first_snapshot=str(dates.min().date()),
        last_snapshot=str(last.date()),
        snapshots=int(dates.nunique()),
        rows=len(frame),
        rows_before_cap=len(frame),
        positives=int(frame[F.LABEL].sum()),
        feature_service="propensity_training",
        feature_views={"customer_activity": "abc", "customer_profile": "def"},
    )


def written(frame: pd.DataFrame, path: Path, horizon: int = HORIZON) -> Path:
    write_training_set(frame, path, info_for(frame, horizon))
    return path


def test_the_split_embargoes_one_label_horizon_before_each_period() -> None:
    frame = _frame(n_dates=24)
    split = split_by_time(frame, HORIZON)
    horizon = pd.Timedelta(days=HORIZON)
    train, valid, test = (set(part[F.EVENT_TIMESTAMP]) for part in (split.train, split.valid, split.test))
    # No training label window reaches into validation, no validation label window into the test.
    assert max(train) + horizon <= min(valid) and max(valid) + horizon <= min(test)
    assert max(test) == frame[F.EVENT_TIMESTAMP].max() and len(test) == len(valid) == 24 // 9
    # The embargoed snapshots are exactly those whose labels would overlap the next period.
    dropped = set(frame[F.EVENT_TIMESTAMP]) - train - valid - test
    assert dropped and all(d + horizon > min(valid) or d + horizon > min(test) for d in dropped)
    assert min(train) == frame[F.EVENT_TIMESTAMP].min()
    # A one-week horizon embargoes nothing with weekly snapshots.
    weekly = split_by_time(frame, 7)
    assert len(weekly.train) + len(weekly.valid) + len(weekly.test) == len(frame)


def test_the_split_needs_room_for_the_embargo() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        split_by_time(_frame(n_dates=2), HORIZON)
    with pytest.raises(ValueError, match="30-day embargo; widen training_window_days"):
        split_by_time(_frame(n_dates=8), HORIZON)
    split_by_time(_frame(n_dates=8), 7)


def test_the_split_follows_the_horizon_recorded_with_the_training_set(settings: Settings, tmp_path: Path) -> None:
    from components.training import read_split

    frame = _frame(n_dates=12)
    short, _ = read_split(written(frame, tmp_path / "short.parquet", horizon=7))
    long, info = read_split(written(frame, tmp_path / "long.parquet", horizon=HORIZON))
    assert info.label_horizon_days == HORIZON
    assert len(short.train) > len(long.train)


def test_model_learns_signal() -> None:
    split = split_by_time(_frame(per_date=200), HORIZON)
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


@pytest.mark.slow
def test_candidates_share_one_read_of_the_training_set(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = written(_frame(per_date=100), tmp_path / "training.parquet")
    reads: list[object] = []
    read_parquet = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda *a, **k: reads.append(a) or read_parquet(*a, **k))
    lightgbm = {"model": "lightgbm", "n_estimators": 20.0, "num_leaves": 7}  # KFP turns 20 into 20.0
    trained = train_candidates(settings, path, [{"max_iter": 10}, lightgbm])
    assert len(reads) == 1
    # The given candidates, then each classical baseline, each its own run.
    baselines = [{"model": kind} for kind in BASELINES]
    assert [c.params for c in trained] == [{"max_iter": 10}, {**lightgbm, "n_estimators": 20}, *baselines]
    assert len({c.run_id for c in trained}) == 5 and all(0.5 < c.valid_auc <= 1 for c in trained[:2])
    # The label follows orders_90d here: ranking by frequency finds it, ranking by recency cannot.
    by_kind = {c.params.get("model"): c.valid_auc for c in trained}
    assert by_kind["frequency_rank"] > 0.6 > abs(by_kind["recency_rank"] - 0.5) + 0.5
    # A baseline the caller already names is not added twice.
    assert len(train_candidates(settings, path, [{"model": "recency_rank"}])) == 3


@pytest.mark.parametrize(
    ("candidates", "error"),
    [
        ([], "candidates must be a non-empty list"),
        ([{"max_iter": 10}, "fast"], "candidates must be a non-empty list"),
        ([{"max_iter": 10}, {"model": "xgboost"}], r"unknown model\(s\) \['xgboost'\]"),
        ([{"model": "recency_rank", "C": 2.0}], "the baseline 'recency_rank' takes no parameters"),
    ],
)
def test_candidates_must_be_parameter_mappings_of_known_models(
    settings: Settings, tmp_path: Path, candidates: list, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        train_candidates(settings, tmp_path / "never-read.parquet", candidates)


RULES = GateRules(
    min_auc=0.6,
    min_improvement=0.0,
    confidence=0.95,
    min_segment_rows=200,
    segment_tolerance=0.02,
    realtime_min_auc=0.55,
)


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


def logged_pair(settings: Settings) -> list[str]:
    """Two tiny logged models (run ids), to register as a batch and a real-time model."""
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    from propensity.tracking import configure

    experiment = configure(settings)
    runs = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.sklearn.log_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="model")
        runs.append(run.info.run_id)
    return runs


@pytest.mark.slow
def test_only_a_challenger_that_passed_the_gate_gets_the_alias(settings: Settings) -> None:
    from mlflow import MlflowClient

    from components.registry import Decision, register_models
    from propensity.tracking import CHALLENGER, alias_version

    runs = logged_pair(settings)
    rejected = register_models(settings, *runs, Decision.unchecked(REJECT, "tie with the champion"))
    assert alias_version(settings, settings.model_name, CHALLENGER) is None
    tags = MlflowClient().get_model_version(settings.model_name, rejected.batch.version).tags
    assert (tags["decision"], tags["decision_reason"]) == (REJECT, "tie with the champion")
    passed = register_models(settings, *runs, Decision.unchecked(PROMOTE, "significantly better"))
    challenger = alias_version(settings, settings.model_name, CHALLENGER)
    assert challenger is not None and challenger.version == passed.batch.version


def test_the_real_time_model_has_its_own_gate() -> None:
    from components.registry import decide_realtime

    labels, signal, _ = scored()
    assert decide_realtime(labels, noisier(signal, 20.0), None, RULES)[0] == REJECT  # below its floor
    assert decide_realtime(labels, signal, None, RULES)[0] == PROMOTE
    # It need not beat its champion (a tie passes), but must not be significantly worse.
    assert decide_realtime(labels, signal, signal.copy(), RULES)[0] == PROMOTE
    decision, reason = decide_realtime(labels, noisier(signal, 1.5), signal, RULES)
    assert decision == REJECT and "significantly worse" in reason
    decision, reason = decide_realtime(np.zeros(50, dtype=int), signal[:50], None, RULES)
    assert decision == REJECT and "one class" in reason


def test_a_release_is_promoted_only_when_both_gates_pass() -> None:
    from components.registry import Decision, Verdict

    passed, failed = Verdict(PROMOTE, "better", 0.8, 0.7, 900), Verdict(REJECT, "worse", 0.6, 0.7, 120)
    assert Decision.of(passed, passed, "3").decision == PROMOTE
    for batch, realtime in ((passed, failed), (failed, passed)):
        decision = Decision.of(batch, realtime, "3")
        assert decision.decision == REJECT and "batch: " in decision.reason and "real-time: " in decision.reason
    # Through KFP metadata (protobuf Struct) numbers come back as floats.
    blob = decision.as_dict()
    blob["realtime"] = {**blob["realtime"], "rows": 900.0}  # type: ignore[dict-item]
    assert Decision.from_dict(blob).realtime.rows == 900


def test_every_version_records_its_gate_and_lineage(settings: Settings, tmp_path: Path) -> None:
    import mlflow.models
    from mlflow import MlflowClient

    from components.registry import Decision, Verdict, register_models
    from components.training import evaluate_run, train_realtime_model

    frame = _frame(n_dates=12, per_date=100)
    path = written(frame, tmp_path / "training.parquet")
    lightgbm = {"model": "lightgbm", "n_estimators": 20}
    candidate, *baselines = train_candidates(settings.with_values(code_version="1.2.3+abc"), path, [lightgbm], "run-42")
    assert len(baselines) == 3
    # The LightGBM candidate, calibrated, comes back from MLflow (skops, with its types trusted).
    evaluation, _ = evaluate_run(settings, path, candidate.run_id)
    assert 0.5 < evaluation.auc <= 1 and set(evaluation.baselines) == {
        "recency rank",
        "frequency rank",
        "logistic regression on RFM",
    }
    realtime = train_realtime_model(settings, path, "run-42")
    decision = Decision.of(Verdict(PROMOTE, "better", 0.8, 0.7, 900), Verdict(REJECT, "worse", 0.5, 0.7, 80), "1")
    registered = register_models(settings, candidate.run_id, realtime, decision)

    client = MlflowClient()
    run = client.get_run(candidate.run_id)
    info = info_for(frame)
    assert run.data.params["as_of_date"] == info.as_of_date
    assert run.data.params["label_horizon_days"] == str(HORIZON) and run.data.params["model"] == "lightgbm"
    assert run.data.params["training_window_days"] == str(info.training_window_days)
    tags = run.data.tags
    assert (tags["pipeline_run_id"], tags["code_version"], tags["feature_service"]) == (
        "run-42",
        "1.2.3+abc",
        "propensity_training",
    )
    assert tags["feature_view.customer_activity"] == "abc" and tags["data_last_snapshot"] == info.last_snapshot
    assert run.data.metrics["training_set_rows"] == len(frame)
    assert run.data.metrics["training_set_label_rate"] == pytest.approx(frame[F.LABEL].mean())
    assert "+" in client.get_run(realtime).data.tags["code_version"]  # the checkout's commit outside an image
    # Calibrated and still exported to ONNX for serving.
    assert client.get_run(realtime).data.tags["serving_runtime"] == "onnx"
    # The real-time version carries its test figures overall and per segment, like the batch model's,
    # on the rows its gate judges (no new customer here: the stated proxy).
    realtime_run = client.get_run(realtime).data
    assert {"test_auc", "test_brier", "test_calibration_error", "test_auc_country_de", "test_auc_country_fr"} <= set(
        realtime_run.metrics
    ), sorted(realtime_run.metrics)
    assert realtime_run.tags["test_rows_judged_on"].startswith("test rows of every customer (a proxy")
    batch = client.get_model_version(settings.model_name, registered.batch.version)
    assert (batch.tags["decision"], batch.tags["gate"], batch.tags["gate_test_rows"]) == (REJECT, PROMOTE, "900")
    rt = client.get_model_version(settings.realtime_model_name, registered.realtime.version)
    assert (rt.tags["gate"], rt.tags["gate_reason"]) == (REJECT, "worse")
    logged = mlflow.models.get_model_info(registered.batch.uri)
    assert logged.signature is not None and logged.saved_input_example_info is not None


def test_calibration_keeps_the_ranking_and_makes_probabilities_honest() -> None:
    from components.report import quality
    from components.training import calibrate, predict_scores

    frame = _frame(n_dates=20, per_date=300)
    frame[F.LABEL] = (np.random.default_rng(5).random(len(frame)) < 0.05 + 0.04 * frame["orders_90d"]).astype(int)
    split = split_by_time(frame, HORIZON)
    # An overfitted model is overconfident: its probabilities run to the extremes.
    overfit = {"max_iter": 300, "learning_rate": 0.5, "max_leaf_nodes": 63, "min_samples_leaf": 2}
    raw = make_model(F.BATCH_MODEL_FEATURES, overfit).fit(split.train[F.BATCH_MODEL_FEATURES], split.train[F.LABEL])
    calibrated = calibrate(raw, split.valid, F.BATCH_MODEL_FEATURES)
    labels = split.test[F.LABEL].to_numpy()
    before = quality(labels, predict_scores(raw, split.test, F.BATCH_MODEL_FEATURES))
    after = quality(labels, predict_scores(calibrated, split.test, F.BATCH_MODEL_FEATURES))
    assert after.auc == pytest.approx(before.auc, abs=1e-9)
    assert after.calibration_error < before.calibration_error / 2 and after.brier < before.brier


def test_the_real_time_model_is_calibrated_on_the_validation_rows_only() -> None:
    from components.training import REALTIME_PARAMS, Split, fit_calibrated, predict_scores

    frame = _frame(n_dates=20, per_date=300)
    split = split_by_time(frame, HORIZON)
    # Customers became keener after the training period: only a calibration on the validation rows sees it.
    keen = split.valid.assign(**{F.LABEL: (np.random.default_rng(2).random(len(split.valid)) < 0.6).astype(int)})
    features = F.REALTIME_MODEL_FEATURES
    model = fit_calibrated(features, REALTIME_PARAMS, Split(split.train, keen, split.test))
    assert predict_scores(model, keen, features).mean() == pytest.approx(keen[F.LABEL].mean(), abs=0.03)
    uncalibrated = make_model(features, REALTIME_PARAMS).fit(split.train[features], split.train[F.LABEL])
    assert predict_scores(uncalibrated, keen, features).mean() < keen[F.LABEL].mean() - 0.1


@pytest.mark.slow
def test_both_champion_aliases_move_together_or_not_at_all(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from components.registry import Decision, register_models
    from propensity.tracking import CHAMPION, alias_version, promote, release_at

    runs = logged_pair(settings)
    first = register_models(settings, *runs, Decision.unchecked(PROMOTE, "first"))
    second = register_models(settings, *runs, Decision.unchecked(PROMOTE, "second"))
    real = MlflowClient.set_registered_model_alias

    def failing_for(model: str) -> Any:
        def set_alias(self: MlflowClient, name: str, alias: str, version: str) -> None:
            if name == model:
                raise RuntimeError("registry unavailable")
            real(self, name, alias, version)

        return set_alias

    def champions() -> tuple[str | None, str | None]:
        refs = (alias_version(settings, name, CHAMPION) for name in (settings.model_name, settings.realtime_model_name))
        return tuple(None if ref is None else ref.version for ref in refs)  # type: ignore[return-value]

    # The very first release, failing at either move: no alias is left behind.
    for model in (settings.realtime_model_name, settings.model_name):
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", failing_for(model))
        with pytest.raises(RuntimeError, match="registry unavailable"):
            promote(settings, first.batch.version, first.realtime.version)
        assert champions() == (None, None), model
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    promote(settings, first.batch.version, first.realtime.version)
    assert champions() == (first.batch.version, first.realtime.version)

    # A later release: both aliases stay on the previous champion.
    for model in (settings.realtime_model_name, settings.model_name):
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", failing_for(model))
        with pytest.raises(RuntimeError):
            promote(settings, second.batch.version, second.realtime.version)
        assert champions() == (first.batch.version, first.realtime.version), model
        assert release_at(settings, CHAMPION) == first
