"""Training and evaluation of the batch model and the real-time (cold-start) model.

The training set is split by snapshot date, never at random: train on the oldest snapshots, choose
hyperparameters on the next ones, and evaluate on the newest, as the model will be used. An embargo
of one label horizon separates the periods: a training row's label window closes before the first
validation snapshot, and a validation row's before the first test snapshot, so no label the model
learned from overlaps the period it is judged on.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from threadpoolctl import threadpool_limits

import propensity
from components.candidates import (
    BASELINES,
    HIST_GRADIENT_BOOSTING,
    LIGHTGBM,
    MODELS,
    display_name,
    model_kind,
    with_baselines,
)
from components.report import QUALITY_HEADER, Quality, baseline_model, baseline_scores, quality
from monitoring.drift import reference_profile
from propensity import features as F
from propensity.errors import PropensityError
from propensity.runtime import choose_runtime
from propensity.settings import Settings
from propensity.tracking import configure, is_trusted_model_type, load_sklearn_uri, log_runtime
from propensity.training_set import TrainingSetInfo, read_training_set

REALTIME_PARAMS: dict[str, Any] = {"learning_rate": 0.1, "max_depth": 3, "max_iter": 100}
SEGMENT = "country"
RUNTIME_CHECK_ROWS = 5000


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def split_by_time(frame: pd.DataFrame, horizon_days: int) -> Split:
    """Test on the newest snapshots (about a ninth of them), validate on the newest whose labels close
    before the test period, train on those whose labels close before the validation period."""
    dates = sorted(pd.Timestamp(d) for d in frame[F.EVENT_TIMESTAMP].unique())
    if len(dates) < 3:
        raise ValueError(f"the training set has {len(dates)} snapshot date(s); at least 3 are needed")
    embargo = pd.Timedelta(days=horizon_days)
    n_eval = max(1, len(dates) // 9)
    test_dates = dates[-n_eval:]
    before_test = [d for d in dates if d + embargo <= test_dates[0]]
    valid_dates = before_test[-n_eval:]
    train_dates = [d for d in before_test if valid_dates and d + embargo <= valid_dates[0]]
    if not train_dates:
        raise ValueError(
            f"the training set's {len(dates)} snapshot dates ({dates[0].date()} to {dates[-1].date()}) leave no "
            f"training period: the validation and test periods each follow a {horizon_days}-day embargo; "
            "widen training_window_days"
        )
    ts = frame[F.EVENT_TIMESTAMP]
    split = Split(
        train=frame[ts.isin(train_dates)],
        valid=frame[ts.isin(valid_dates)],
        test=frame[ts.isin(test_dates)],
    )
    for name, part in (("training", split.train), ("validation", split.valid), ("test", split.test)):
        buyers = int(part[F.LABEL].sum())
        if buyers == 0 or buyers == len(part):
            period = f"{part[F.EVENT_TIMESTAMP].min().date()} to {part[F.EVENT_TIMESTAMP].max().date()}"
            raise ValueError(
                f"the {name} period ({period}, {len(part)} rows) holds {'no buyer' if buyers == 0 else 'only buyers'}"
                ": no model can be fitted or judged on one class; widen training_window_days or bring more customers"
            )
    return split


def read_split(training_set: Path, known_only: bool = True) -> tuple[Split, TrainingSetInfo]:
    """The training set's split (of the known customers, or of everyone) with its lineage."""
    frame, info = read_training_set(training_set)
    return split_by_time(F.known_customers(frame) if known_only else frame, info.label_horizon_days), info


INTEGER_PARAMS = {
    "max_iter",
    "max_leaf_nodes",
    "max_depth",
    "min_samples_leaf",
    "max_bins",
    "n_estimators",
    "num_leaves",
    "min_child_samples",
}


def coerce_params(params: dict[str, Any]) -> dict[str, Any]:
    """KFP passes parameters through JSON/protobuf, which turns 100 into 100.0."""
    return {k: int(v) if k in INTEGER_PARAMS and v is not None else v for k, v in params.items()}


def make_model(features: list[str], params: dict[str, Any]) -> Pipeline:
    if model_kind(params) in BASELINES:  # no parameters (checked by train_candidates)
        return baseline_model(model_kind(params))
    categorical = [c for c in features if c in F.CATEGORICAL_FEATURES]
    numeric = [c for c in features if c not in F.CATEGORICAL_FEATURES]
    prep = ColumnTransformer(
        [
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
            ("numeric", "passthrough", numeric),
        ]
    )
    learner = dict(coerce_params(params))
    kind = learner.pop("model", HIST_GRADIENT_BOOSTING)
    if kind == LIGHTGBM:
        from lightgbm import LGBMClassifier

        classifier: Any = LGBMClassifier(random_state=0, verbose=-1, **learner)
    elif kind == HIST_GRADIENT_BOOSTING:
        classifier = HistGradientBoostingClassifier(random_state=0, **learner)
    else:
        raise ValueError(f"unknown model {kind!r} in a candidate; choose one of {', '.join(MODELS)}")
    return Pipeline([("prepare", prep), ("classify", classifier)])


def calibrate(model: Any, rows: pd.DataFrame, features: list[str]) -> Any:
    """Platt scaling of the fitted model's log-odds on the validation rows: scores become honest
    probabilities (campaign budgets are sized with them) and the ranking, hence AUC, is unchanged."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    return CalibratedClassifierCV(FrozenEstimator(model), method="sigmoid").fit(rows[features], rows[F.LABEL])


def fit_calibrated(features: list[str], params: dict[str, Any], split: Split) -> Pipeline:
    """Fit on the training rows and Platt-scale on the validation rows, like `calibrate`, but with
    the calibration inside the pipeline's last step on the bare classifier: skl2onnx exports that
    (it has no converter for FrozenEstimator), so the real-time model keeps its ONNX runtime."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import PredefinedSplit

    model = make_model(features, params)
    rows = pd.concat([split.train, split.valid])
    calibration_fold = np.r_[np.full(len(split.train), -1), np.zeros(len(split.valid), dtype=int)]
    classifier = CalibratedClassifierCV(model.steps[-1][1], method="sigmoid", cv=PredefinedSplit(calibration_fold))
    model.steps[-1] = (model.steps[-1][0], classifier)
    return model.fit(rows[features], rows[F.LABEL])


def predict_scores(model: Any, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    return np.asarray(model.predict_proba(frame[features])[:, 1])


def code_version(settings: Settings) -> str:
    """The version baked into the image at build time, else the checkout's git commit."""
    if settings.code_version:
        return settings.code_version
    try:
        # Security lint (B603): a fixed argv; git from PATH names a dev checkout's commit.
        argv, here = ["git", "rev-parse", "--short", "HEAD"], Path(__file__).parent
        done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=here, timeout=5)  # nosec B603
        sha = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return f"{propensity.__version__}+{sha}"


def _log_model(model: Pipeline, sample: pd.DataFrame) -> None:
    import skops.io as sio  # costs seconds to import: only the steps that save a model pay for it

    # skops (MLflow's default format) refuses unknown types on load; trust exactly the sklearn
    # internals this model holds rather than falling back to pickle (checked again on load).
    trusted = [t for t in sio.get_untrusted_types(data=sio.dumps(model)) if is_trusted_model_type(t)]
    signature = infer_signature(sample, model.predict_proba(sample)[:, 1])
    # The requirements are known: scikit-learn and skops, and LightGBM when the model holds one.
    # Left to infer them, MLflow loads the model again in a subprocess (8 to 10 s per model here).
    requirements = mlflow.sklearn.get_default_pip_requirements(include_skops=True)
    if any(t.startswith("lightgbm.") for t in trusted):
        from importlib.metadata import version

        requirements.append(f"lightgbm=={version('lightgbm')}")
    mlflow.sklearn.log_model(
        model,
        name="model",
        signature=signature,
        input_example=sample.head(5),
        pyfunc_predict_fn="predict_proba",
        skops_trusted_types=trusted,
        pip_requirements=requirements,
    )


@dataclass(frozen=True)
class Candidate:
    run_id: str
    valid_auc: float
    params: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        return cls(**json.loads(text))


TRAINING_SET_TAG = "training_set"


def training_set_of_run(settings: Settings, run_id: str) -> TrainingSetInfo:
    """The lineage of the training set an MLflow run trained on (`rebuild_training_set` builds it again)."""
    configure(settings)
    tags = mlflow.get_run(run_id).data.tags
    if TRAINING_SET_TAG not in tags:
        raise PropensityError(f"MLflow run {run_id} records no training set; was it trained by this pipeline?")
    return TrainingSetInfo.from_json(tags[TRAINING_SET_TAG])


def log_lineage(settings: Settings, info: TrainingSetInfo, split: Split, role: str, pipeline_run_id: str) -> None:
    """What a reviewer needs to trace a model version back: run, data, features, code. The run's
    parameters (as-of date, window, horizon) are logged as MLflow params, the rest as tags/metrics."""
    periods = {
        name: f"{part[F.EVENT_TIMESTAMP].min().date()}..{part[F.EVENT_TIMESTAMP].max().date()}"
        for name, part in (("train", split.train), ("valid", split.valid), ("test", split.test))
    }
    mlflow.set_tags(
        {
            "role": role,
            "pipeline_run_id": pipeline_run_id,
            "code_version": code_version(settings),
            "feature_service": info.feature_service,
            **{f"feature_view.{name}": version for name, version in sorted(info.feature_views.items())},
            "data_first_snapshot": info.first_snapshot,
            "data_last_snapshot": info.last_snapshot,
            **{f"{name}_period": period for name, period in periods.items()},
            # The table snapshots it read, and all it takes to build the same training set again.
            **{f"table_snapshot.{name}": str(snapshot) for name, snapshot in sorted(info.table_snapshots.items())},
            TRAINING_SET_TAG: json.dumps(info.as_dict(), sort_keys=True),
        }
    )
    mlflow.log_params(
        {
            "as_of_date": info.as_of_date,
            "training_window_days": info.training_window_days,
            "label_horizon_days": info.label_horizon_days,
            "snapshot_every_days": info.snapshot_every_days,
        }
    )
    mlflow.log_metrics(
        {
            "training_set_rows": info.rows,
            "training_set_rows_before_cap": info.rows_before_cap,
            "training_set_label_rate": info.label_rate,
            "train_rows": len(split.train),
            "train_label_rate": float(split.train[F.LABEL].mean()),
        }
    )


def fit_candidate(
    settings: Settings, split: Split, info: TrainingSetInfo, params: dict[str, Any], pipeline_run_id: str = "local"
) -> Candidate:
    """Fit one hyperparameter candidate of the batch model on a split and log it as an MLflow run."""
    params = coerce_params(params)
    # Other steps (the cold-start model) fit beside this one; OpenMP threads beyond the cores they
    # share make each fit far slower.
    with threadpool_limits(limits=settings.candidate_threads, user_api="openmp"):
        model = make_model(F.BATCH_MODEL_FEATURES, params).fit(
            split.train[F.BATCH_MODEL_FEATURES], split.train[F.LABEL]
        )
    valid_auc = float(roc_auc_score(split.valid[F.LABEL], predict_scores(model, split.valid, F.BATCH_MODEL_FEATURES)))
    model = calibrate(model, split.valid, F.BATCH_MODEL_FEATURES)
    experiment_id = configure(settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name="batch-candidate") as run:
        log_lineage(settings, info, split, "batch", pipeline_run_id)
        mlflow.log_params({"model": model_kind(params), **params})
        mlflow.log_metric("valid_auc", valid_auc)
        _log_model(model, split.train[F.BATCH_MODEL_FEATURES].head(200))
    return Candidate(run_id=run.info.run_id, valid_auc=valid_auc, params=params)


def train_candidates(
    settings: Settings, training_set: Path, candidates: list[dict[str, Any]], pipeline_run_id: str = "local"
) -> list[Candidate]:
    """Fit every hyperparameter candidate, and each classical baseline, on one read of the training set,
    each logged as an MLflow run. The best on the validation rows is the model, simple or not."""
    if not candidates or not all(isinstance(params, dict) for params in candidates):
        raise ValueError(f"candidates must be a non-empty list of parameter mappings, got {candidates!r}")
    unknown = [p["model"] for p in candidates if p.get("model", HIST_GRADIENT_BOOSTING) not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown} in the candidates; choose among {', '.join(MODELS)}")
    for params in candidates:
        if model_kind(params) in BASELINES and set(params) != {"model"}:
            extra = sorted(set(params) - {"model"})
            raise ValueError(f"the baseline {model_kind(params)!r} takes no parameters, got {extra}")
    split, info = read_split(training_set)
    return [fit_candidate(settings, split, info, params, pipeline_run_id) for params in with_baselines(candidates)]


def select_best(candidates: list[Candidate]) -> Candidate:
    if not candidates:
        raise ValueError("no candidate was trained")
    return max(candidates, key=lambda c: (c.valid_auc, c.run_id))


@dataclass(frozen=True)
class RealtimeTestRows:
    """The test rows the real-time model is judged on, and what they are, for the decision."""

    rows: pd.DataFrame
    judged_on: str
    rows_name: str  # short, for the gate's reason


def realtime_test_rows(test: pd.DataFrame) -> RealtimeTestRows:
    """The test snapshots' rows that look like new customers, the rows the model exists for. A shop
    whose test window holds none (every customer bought within the active window), or only buyers or
    only non-buyers among them, cannot judge it there: then every test row is the stated proxy (the
    model also serves known customers whose batch score is missing or stale)."""
    new = F.new_customers(test)
    if new[F.LABEL].nunique() == 2:
        return RealtimeTestRows(new, "new-customer test rows", "new customers")
    why = "no new customer" if new.empty else f"{len(new)} new-customer row(s) of one class"
    judged_on = f"test rows of every customer (a proxy: the test window holds {why})"
    return RealtimeTestRows(test, judged_on, "every customer (proxy)")


def train_realtime_model(settings: Settings, training_set: Path, pipeline_run_id: str = "local") -> str:
    """Fit the cold-start model on every customer, new ones included; log its test metrics, overall
    and per segment, on the rows its gate judges it on; return its MLflow run id."""
    split, info = read_split(training_set, known_only=False)
    features = F.REALTIME_MODEL_FEATURES
    model = fit_calibrated(features, REALTIME_PARAMS, split)
    judged = realtime_test_rows(split.test)
    evaluation = evaluate_scores(
        judged.rows[F.LABEL], predict_scores(model, judged.rows, features), judged.rows[SEGMENT], model="real-time"
    )
    experiment_id = configure(settings)
    # The serving runtime is chosen here, on rows the model has not seen (propensity.runtime).
    exported, difference = choose_runtime(model, features, split.test.head(RUNTIME_CHECK_ROWS))
    with mlflow.start_run(experiment_id=experiment_id, run_name="realtime-model") as run:
        log_lineage(settings, info, split, "realtime", pipeline_run_id)
        mlflow.log_params(REALTIME_PARAMS)
        mlflow.set_tag("test_rows_judged_on", judged.judged_on)
        log_test_metrics(evaluation)
        _log_model(model, split.train[features].head(200))
        log_runtime(exported, difference)
    return str(run.info.run_id)


@dataclass(frozen=True)
class Evaluation:
    auc: float
    average_precision: float
    log_loss: float
    brier: float
    calibration_error: float
    top_decile_capture: float
    test_rows: int
    positive_rate: float
    segment_auc: dict[str, float]
    baselines: dict[str, Quality] = field(default_factory=dict)
    model: str = ""  # the selected candidate's learner, or the baseline that won

    @property
    def is_baseline(self) -> bool:
        return self.model in BASELINES.values()

    @property
    def quality(self) -> Quality:
        return Quality(self.auc, self.average_precision, self.brier, self.calibration_error, self.top_decile_capture)

    def markdown(self) -> str:
        rows = "\n".join(f"| {segment} | {auc:.4f} |" for segment, auc in sorted(self.segment_auc.items()))
        baselines = "\n".join(q.row(name) for name, q in self.baselines.items())
        chosen = (
            f"The model is the baseline **{self.model}**: it ranked the validation rows better than every learner.\n\n"
            if self.is_baseline
            else (f"The model: {self.model}, the best candidate on the validation rows.\n\n" if self.model else "")
        )
        return (
            f"# Evaluation on the newest snapshots ({self.test_rows} rows)\n\n{chosen}"
            f"Positive rate {self.positive_rate:.3f}, log loss {self.log_loss:.4f}.\n\n"
            f"{QUALITY_HEADER}\n{self.quality.row('this model')}\n{baselines}\n\n"
            f"| {SEGMENT} | AUC |\n|---|---|\n{rows}\n"
        )


def evaluate_scores(
    labels: pd.Series,
    scores: np.ndarray,
    segments: pd.Series,
    baselines: dict[str, np.ndarray] | None = None,
    model: str = "",
) -> Evaluation:
    segment_auc = {
        str(segment): float(roc_auc_score(labels[mask], scores[mask.to_numpy()]))
        for segment, mask in ((s, segments == s) for s in segments.unique())
        if labels[mask].nunique() == 2
    }
    measured = quality(labels.to_numpy(), scores)
    return Evaluation(
        auc=measured.auc,
        average_precision=measured.pr_auc,
        log_loss=float(log_loss(labels, np.clip(scores, 1e-6, 1 - 1e-6))),
        brier=measured.brier,
        calibration_error=measured.calibration_error,
        top_decile_capture=measured.top_decile_capture,
        test_rows=len(labels),
        positive_rate=float(labels.mean()),
        segment_auc=segment_auc,
        baselines={name: quality(labels.to_numpy(), s) for name, s in (baselines or {}).items()},
        model=model,
    )


def log_test_metrics(evaluation: Evaluation) -> None:
    """A model's test figures on its run, overall and per segment: the same names for both models."""
    mlflow.log_metrics(
        {
            "test_rows": evaluation.test_rows,
            "test_auc": evaluation.auc,
            "test_average_precision": evaluation.average_precision,
            "test_log_loss": evaluation.log_loss,
            "test_brier": evaluation.brier,
            "test_calibration_error": evaluation.calibration_error,
            "test_top_decile_capture": evaluation.top_decile_capture,
            **{f"test_auc_{SEGMENT}_{metric_name(k)}": v for k, v in evaluation.segment_auc.items()},
        }
    )


def run_model_kind(run_id: str) -> str:
    """The learner or baseline a candidate's run fitted (runs from before it was logged: the default)."""
    return str(mlflow.get_run(run_id).data.params.get("model", HIST_GRADIENT_BOOSTING))


def metric_name(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


def evaluate_run(settings: Settings, training_set: Path, run_id: str) -> tuple[Evaluation, pd.DataFrame]:
    """Evaluate a logged batch model on the test snapshots, beside the baselines fitted on the same
    training rows; log the metrics to its run."""
    configure(settings)
    split, _ = read_split(training_set)
    test = split.test
    model = load_sklearn_uri(f"runs:/{run_id}/model")
    scores = predict_scores(model, test, F.BATCH_MODEL_FEATURES)
    kind = display_name(run_model_kind(run_id))
    evaluation = evaluate_scores(test[F.LABEL], scores, test[SEGMENT], baseline_scores(split.train, test), kind)
    with mlflow.start_run(run_id=run_id):
        log_test_metrics(evaluation)
        mlflow.log_metrics({f"baseline_{metric_name(name)}_auc": q.auc for name, q in evaluation.baselines.items()})
        # Kept with the model for drift monitoring: the reference profile (quantiles and category
        # counts of every test row) and a bounded sample of the rows for the HTML report.
        reference = test[[*F.BATCH_MODEL_FEATURES]].assign(score=scores)
        mlflow.log_dict(reference_profile(reference).to_json(), "monitoring/profile.json")
        if len(reference) > settings.drift_sample_rows:
            reference = reference.sample(settings.drift_sample_rows, random_state=0)
        path = settings.scratch_dir / run_id / "reference.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="monitoring")
        path.unlink()
        path.parent.rmdir()
    return evaluation, test.assign(score=scores)


def roc_points(labels: pd.Series, scores: np.ndarray, max_points: int = 50) -> tuple[list[float], ...]:
    """A thinned ROC curve (fpr, tpr, thresholds) small enough for the KFP UI."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).astype(int))
    clipped = np.clip(thresholds[keep], 0.0, 1.0)  # roc_curve's first threshold is inf
    return fpr[keep].tolist(), tpr[keep].tolist(), clipped.tolist()


def confusion(labels: pd.Series, scores: np.ndarray, threshold: float = 0.5) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, (scores >= threshold).astype(int), labels=[0, 1]).tolist()
