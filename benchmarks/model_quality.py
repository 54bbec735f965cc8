"""Model quality against simple baselines, all computed in one run on the same test rows.

Generates a synthetic shop, runs the training steps in-process (materialize, training set, data
validation, candidates, evaluation) and prints one Markdown table per model: the batch model (on
the known customers of the test snapshots) and the real-time model (on the test rows that look like
new customers), each beside the baselines: recency rank, frequency rank and a logistic regression
on recency, frequency and monetary value, fitted on the same training rows. One more row shows what
the features add: the selected learner refitted on the recency/frequency/monetary windows, tenure
and profile alone (the feature set before the rhythm, trend and calendar features).

Usage: `python benchmarks/model_quality.py [--customers 3000] [--days 540] [--seed 7]`; the output is
what docs/model-quality.md records. Quality does not depend on the machine, only on the seed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlflow.sklearn
import numpy as np

from components.candidates import DEFAULT_CANDIDATES, HIST_GRADIENT_BOOSTING
from components.features import build_training_set, materialize_features
from components.registry import auc_difference
from components.report import baseline_scores, quality_table
from components.training import (
    calibrate,
    make_model,
    predict_scores,
    read_split,
    select_best,
    train_candidates,
)
from components.training import train_realtime_model as fit_realtime
from components.validation import validate_data
from propensity import features as F
from propensity.lake import ingest
from propensity.settings import get_settings
from propensity.synthetic import generate
from propensity.tracking import configure

# The features the batch model had before the rhythm, trend and calendar features.
WINDOW_FEATURES = [*F.WINDOW_FEATURES, *F.PROFILE_FEATURES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = get_settings(home=work / "home")
        data = generate(customers=args.customers, days=args.days, seed=args.seed)
        data.transactions.to_parquet(work / "tx.parquet", index=False)
        data.customers.to_parquet(work / "customers.parquet", index=False)
        ingest(settings, work / "tx.parquet", work / "customers.parquet")
        materialize_features(settings)
        path = work / "training.parquet"
        info = build_training_set(settings, path)
        validation = validate_data(settings, path)
        trained = train_candidates(settings, path, DEFAULT_CANDIDATES)
        best = select_best(trained)
        realtime_run = fit_realtime(settings, path)
        configure(settings)

        split, _ = read_split(path)
        test = split.test

        def scores(run_id: str) -> object:
            return predict_scores(mlflow.sklearn.load_model(f"runs:/{run_id}/model"), test, F.BATCH_MODEL_FEATURES)

        # The best candidate of each learner (by validation AUC, as the pipeline selects), on the test rows.
        learners: dict[str, object] = {}
        for candidate in sorted(trained, key=lambda c: -c.valid_auc):
            learner = candidate.params.get("model", HIST_GRADIENT_BOOSTING)
            if learner not in learners:
                chosen = " (selected)" if candidate.run_id == best.run_id else ""
                learners[learner] = (
                    f"{learner}{chosen}, valid AUC {candidate.valid_auc:.4f}",
                    scores(candidate.run_id),
                )
        windows_only = make_model(WINDOW_FEATURES, best.params).fit(split.train[WINDOW_FEATURES], split.train[F.LABEL])
        windows_only = calibrate(windows_only, split.valid, WINDOW_FEATURES)
        learners["windows only"] = (
            "selected candidate on the window features only",
            predict_scores(windows_only, test, WINDOW_FEATURES),
        )
        everyone, _ = read_split(path, known_only=False)
        new = F.new_customers(everyone.test)
        realtime_model = mlflow.sklearn.load_model(f"runs:/{realtime_run}/model")
        realtime = predict_scores(realtime_model, new, F.REALTIME_MODEL_FEATURES)
        new_train = F.new_customers(everyone.train)

        print(
            f"Synthetic shop: {args.customers} customers, {args.days} days, seed {args.seed}; training set "
            f"{info.rows} rows over {info.snapshots} snapshots ({info.first_snapshot} to {info.last_snapshot}), "
            f"label rate {info.label_rate:.3f}; data validation {'passed' if validation.success else 'FAILED'}.\n"
        )
        print(f"Batch model candidates (calibrated), known customers: {len(test)} test rows\n")
        rows = dict(learners.values())
        baselines = baseline_scores(split.train, test)
        labels = test[F.LABEL].to_numpy()
        print(quality_table(labels, {**rows, **baselines}))  # type: ignore[arg-type]
        # Is the gap real? The gate's paired DeLong interval, selected model against each other row.
        selected = learners[best.params.get("model", HIST_GRADIENT_BOOSTING)][1]
        others = {"windows only": learners["windows only"][1], **baselines}
        for name, other in others.items():
            gap, error = auc_difference(labels, np.asarray(selected), np.asarray(other))
            low, high = gap - 1.96 * error, gap + 1.96 * error
            print(f"* selected - {name}: AUC {gap:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}]")
        print()
        print(f"Real-time model, rows that look like new customers: {len(new)} test rows\n")
        print(quality_table(new[F.LABEL].to_numpy(), {"real-time model": realtime, **baseline_scores(new_train, new)}))
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
