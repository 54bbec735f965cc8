"""Realised accuracy of the nightly batch scores: how well they ranked once what happened is known.

A historic scores partition (`score_date=t`) gets labels once its whole label window [t, t + horizon)
lies before `as_of` and the lake holds transactions up to then; the label of a scored customer is the
one training uses (`propensity.features.snapshot_labels`), from transactions before `as_of` only.
Per score date, model version and segment (`country`, the training segment, and "all") it records
AUC, Brier score and expected calibration error. Every aggregation runs in Spark where the rows are;
the driver receives at most ~10,001 score counts per group for the exact Mann-Whitney AUC.

The series lives on storage (`monitoring/realised_accuracy.json`) and grows incrementally: a score
date is computed when it is missing or when its partition's files changed (a rescored date), so a
rerun recomputes nothing and a rescore replaces that date's points.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from propensity import features as F
from propensity.charts import png_bytes, png_img
from propensity.errors import PropensityError
from propensity.lake import (
    DATE_PARTITION,
    first_data_date,
    last_data_date,
    read_customers,
    read_transactions,
    resolve_date,
)
from propensity.metrics import calibration_bin_column, calibration_error_from_bins
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.storage import Storage
from propensity.tables import (
    HISTORIC_SCORES,
    SCORE_DATE,
    TableSnapshot,
    current_snapshot,
    partitions,
    read_snapshot,
)

SERIES_KEY = "monitoring/realised_accuracy.json"
PLOT_KEY = "monitoring/realised_accuracy.png"
# The segment training evaluates per (components.training.SEGMENT, not imported: that module pulls
# in the learners); keep the two equal.
SEGMENT = "country"
ALL = "all"  # the segment of the whole partition
# Scores are counted per value rounded to 4 decimals for the AUC. Rounding is monotone, so it never
# reverses the order of two scores; it only turns into a tie (counted 1/2) a pair closer than 1e-4.
AUC_DECIMALS = 4

_GROUP = ["model_version", "segment"]


@dataclass(frozen=True)
class AccuracyPoint:
    """Realised accuracy of one score date, model version and segment."""

    score_date: str
    model_version: str
    segment: str  # "all", or a country
    rows: int
    positives: int
    auc: float | None  # None when the rows hold one class only
    brier: float
    calibration_error: float  # propensity.metrics.expected_calibration_error, as training measures it
    mean_score: float
    positive_rate: float
    fingerprint: str  # the historic table's snapshot that last changed the date: a rescored date is recomputed


@dataclass(frozen=True)
class AccuracySeries:
    points: list[AccuracyPoint]  # the whole stored series, sorted
    computed: list[str]  # score dates computed by this update


def _sort_key(point: AccuracyPoint) -> tuple[str, str, bool, str]:
    return (point.score_date, point.model_version, point.segment != ALL, point.segment)


def mann_whitney_auc(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """AUC from counts per distinct score: the share of (positive, negative) pairs ranked right, ties
    counting 1/2 (the Mann-Whitney statistic). None when either class is absent."""
    order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
    pos = np.asarray(positives, dtype=float)[order]
    neg = np.asarray(negatives, dtype=float)[order]
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return None
    negatives_below = np.cumsum(neg) - neg
    return float((pos * (negatives_below + 0.5 * neg)).sum() / (total_pos * total_neg))


def _naive(as_of: pd.Timestamp | str) -> pd.Timestamp:
    value = pd.Timestamp(as_of)
    return value.tz_convert("UTC").tz_localize(None) if value.tzinfo is not None else value


def complete_score_dates(settings: Settings, as_of: pd.Timestamp) -> dict[str, int | None]:
    """Score dates whose label window closed by `as_of` and by the end of the lake's data (a window
    past the last ingested day is not complete: missing data would read as "did not buy"), each with
    the historic table's snapshot that last changed it: a rescored date has a new one, so its
    realised accuracy is computed again (from the table's metadata, no JVM). None once maintenance
    has expired that snapshot: the date's accuracy is computed once more, as "None", then kept."""
    as_of = _naive(as_of)
    first = first_data_date(settings)
    if as_of <= first:
        raise PropensityError(
            f"as_of {as_of.date()} is not after the first transaction day {first.date()} in the lake; "
            "no label can be known yet, pick a later date"
        )
    cutoff = min(as_of, last_data_date(settings))
    horizon = pd.Timedelta(days=settings.label_horizon_days)
    complete = {}
    for value, snapshot in partitions(settings, HISTORIC_SCORES, SCORE_DATE).items():
        try:
            day = pd.Timestamp(value)
        except ValueError:
            raise PropensityError(
                f"the historic scores table has a partition {SCORE_DATE}={value!r}, which is not a date; delete it"
            ) from None
        if day + horizon <= cutoff:
            complete[value] = snapshot
    return complete


def _labelled_scores(
    spark: SparkSession,
    settings: Settings,
    score_date: str,
    snapshot: TableSnapshot,
    transactions: DataFrame,
    customers: DataFrame,
) -> DataFrame:
    """One partition's scores in that snapshot of the historic table, with their label and segment,
    each row twice: its country and "all"."""
    historic = read_snapshot(spark, settings, snapshot)
    entities = historic.where((sf.col(SCORE_DATE) == score_date) & sf.col("score").isNotNull()).select(
        F.ENTITY,
        sf.col("score").cast("double").alias("score"),
        sf.col("model_version").cast("string").alias("model_version"),
        sf.lit(score_date).cast("timestamp_ntz").alias(F.EVENT_TIMESTAMP),
    )
    labelled = F.snapshot_labels(entities, transactions, settings.label_horizon_days)
    return labelled.join(customers, F.ENTITY, "left").select(
        "model_version",
        "score",
        sf.col(F.LABEL).cast("double").alias(F.LABEL),
        sf.explode(sf.array(sf.coalesce(sf.col(SEGMENT), sf.lit(F.UNKNOWN)), sf.lit(ALL))).alias("segment"),
    )


def _summaries(labelled: DataFrame) -> pd.DataFrame:
    """Per group: rows, positives, Brier, calibration error and mean score, from one groupBy over the
    calibration bins (each bin's sums, at most ten rows per group reach the driver), combined by the
    one definition of the calibration error (propensity.metrics)."""
    score, label = sf.col("score"), sf.col(F.LABEL)
    bins: pd.DataFrame = (
        labelled.groupBy(*_GROUP, calibration_bin_column(score).alias("bin"))
        .agg(
            sf.count(sf.lit(1)).alias("n"),
            sf.sum(label).alias("pos"),
            sf.sum(score).alias("score_sum"),
            sf.sum((score - label) * (score - label)).alias("squared_error"),
        )
        .toPandas()
    )
    rows = []
    for (version, segment), group in bins.groupby(_GROUP, sort=False):
        n = float(group["n"].sum())
        rows.append(
            {
                "model_version": version,
                "segment": segment,
                "rows": int(n),
                "positives": float(group["pos"].sum()),
                "brier": float(group["squared_error"].sum()) / n,
                "calibration_error": calibration_error_from_bins(group["n"], group["pos"], group["score_sum"]),
                "mean_score": float(group["score_sum"].sum()) / n,
            }
        )
    return pd.DataFrame(rows, columns=[*_GROUP, "rows", "positives", "brier", "calibration_error", "mean_score"])


def _aucs(labelled: DataFrame) -> dict[tuple[str, str], float | None]:
    """Per group, the exact AUC of the rounded scores from (score, positives, negatives) counts."""
    counts: pd.DataFrame = (
        labelled.groupBy(*_GROUP, sf.round("score", AUC_DECIMALS).alias("s"))
        .agg(sf.sum(F.LABEL).alias("pos"), sf.sum(1 - sf.col(F.LABEL)).alias("neg"))
        .toPandas()
    )
    return {
        (str(version), str(segment)): mann_whitney_auc(
            group["s"].to_numpy(), group["pos"].to_numpy(), group["neg"].to_numpy()
        )
        for (version, segment), group in counts.groupby(_GROUP, sort=False)
    }


def realised_accuracy(
    spark: SparkSession, settings: Settings, as_of: pd.Timestamp, score_dates: Collection[str] | None = None
) -> list[AccuracyPoint]:
    """Accuracy points of every score date whose labels are complete by `as_of` (or of the given
    ones, which must be complete), per model version and segment and per model version overall."""
    as_of = _naive(as_of)
    complete = complete_score_dates(settings, as_of)
    if score_dates is None:
        dates = list(complete)
    else:
        incomplete = sorted(set(score_dates) - set(complete))
        if incomplete:
            raise PropensityError(
                f"score date(s) {', '.join(incomplete)} have no historic scores with labels complete by "
                f"{as_of.date()} ({settings.label_horizon_days}-day horizon)"
            )
        dates = sorted(set(score_dates))
    if not dates:
        return []
    # Every date is read from the table's current snapshot, taken after the listing: a date's rows
    # there are those of the snapshot that last changed it, which is old enough (at least the label
    # horizon) for a retention to have expired it. A date rescored since the
    # listing is read new under its old fingerprint, so the next run computes it again.
    current = current_snapshot(settings, HISTORIC_SCORES)
    if current is None:  # deleted since the listing
        raise PropensityError("the historic scores table is gone; run batch scoring first")
    customers = read_customers(spark, settings).select(F.ENTITY, SEGMENT)
    everything = read_transactions(spark, settings).where(
        sf.col("timestamp") < sf.lit(as_of.to_pydatetime()).cast("timestamp_ntz")
    )
    points: list[AccuracyPoint] = []
    # One date at a time: the driver holds one date's score counts, never a partition's rows.
    for score_date in dates:
        # The partition as of this snapshot: one rescored meanwhile gets a new fingerprint next time.
        snapshot = complete[score_date]
        fingerprint = str(snapshot)
        start = pd.Timestamp(score_date)
        window_end = start + pd.Timedelta(days=settings.label_horizon_days)
        # Partition pruning: only the label window's days are read (the partition values are
        # YYYY-MM-DD text, compared as text so that Iceberg gets the filter as it is).
        transactions = everything.where(
            (sf.col(DATE_PARTITION) >= str(start.date())) & (sf.col(DATE_PARTITION) < str(window_end.date()))
        )
        labelled = _labelled_scores(spark, settings, score_date, current, transactions, customers).persist()
        try:
            summaries, aucs = _summaries(labelled), _aucs(labelled)
        finally:
            labelled.unpersist()
        for row in summaries.itertuples(index=False):
            rows, positives = int(row.rows), int(row.positives)
            points.append(
                AccuracyPoint(
                    score_date=score_date,
                    model_version=str(row.model_version),
                    segment=str(row.segment),
                    rows=rows,
                    positives=positives,
                    auc=aucs.get((str(row.model_version), str(row.segment))),
                    brier=float(row.brier),
                    calibration_error=float(row.calibration_error),
                    mean_score=float(row.mean_score),
                    positive_rate=positives / rows,
                    fingerprint=fingerprint,
                )
            )
    return sorted(points, key=_sort_key)


def read_accuracy_series(settings: Settings) -> list[AccuracyPoint]:
    """The stored series, sorted (empty before the first complete score date)."""
    content = Storage(settings).read_json(SERIES_KEY, [])
    names = [f.name for f in fields(AccuracyPoint)]
    try:
        points = [AccuracyPoint(**{name: item[name] for name in names}) for item in content]
    except (KeyError, TypeError) as exc:
        raise PropensityError(
            f"{Storage(settings).uri(SERIES_KEY)} is not a realised-accuracy series ({exc!r}); "
            "delete it to recompute the series"
        ) from None
    return sorted(points, key=_sort_key)


def update_accuracy_series(settings: Settings, as_of: pd.Timestamp | None = None) -> AccuracySeries:
    """Compute the score dates that are complete by `as_of` (default: the day after the last
    transaction) and missing from the stored series or rescored since; replace their points and
    write the series once. A rerun computes nothing and starts no Spark session."""
    as_of = resolve_date(settings, None) if as_of is None else _naive(as_of)
    stored = read_accuracy_series(settings)
    known = {p.score_date: p.fingerprint for p in stored}
    complete = complete_score_dates(settings, as_of)
    todo = [d for d, snapshot in complete.items() if known.get(d) != str(snapshot)]
    if not todo:
        return AccuracySeries(points=stored, computed=[])
    spark = spark_session(settings, "propensity-accuracy")
    fresh = realised_accuracy(spark, settings, as_of, todo)
    points = sorted([p for p in stored if p.score_date not in set(todo)] + fresh, key=_sort_key)
    Storage(settings).write_json(SERIES_KEY, [asdict(p) for p in points])
    return AccuracySeries(points=points, computed=todo)


# The trigger condition ---------------------------------------------------------------------------


def mlflow_test_auc(settings: Settings) -> Callable[[str], float | None]:
    """Look up a model version's `test_auc` (logged at evaluation) in MLflow; None when unknown."""

    def lookup(version: str) -> float | None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from propensity.tracking import configure

        configure(settings)
        client = MlflowClient()
        try:
            run_id = client.get_model_version(settings.model_name, version).run_id
            value = client.get_run(str(run_id)).data.metrics.get("test_auc") if run_id else None
        except MlflowException:
            return None
        return None if value is None else float(value)

    return lookup


def accuracy_condition(
    settings: Settings,
    points: Sequence[AccuracyPoint],
    test_auc: Callable[[str], float | None] | None = None,
) -> tuple[bool, str]:
    """Whether the newest complete score date's realised AUC (segment "all", per model version) is
    below `accuracy_auc_floor` or more than `accuracy_auc_tolerance` below the version's own test
    AUC; with one line saying why, figures included, either way."""
    overall = [p for p in points if p.segment == ALL]
    if not overall:
        return False, "no score date has complete labels yet"
    lookup = test_auc if test_auc is not None else mlflow_test_auc(settings)
    newest = max(p.score_date for p in overall)
    floor, tolerance = settings.accuracy_auc_floor, settings.accuracy_auc_tolerance
    holds, reasons = False, []
    for point in sorted((p for p in overall if p.score_date == newest), key=_sort_key):
        what = f"version {point.model_version} on {newest}"
        if point.auc is None:
            reasons.append(f"{what}: AUC undefined ({point.rows} rows, {point.positives} buyers: one class only)")
            continue
        figures = f"{what}: realised AUC {point.auc:.3f} over {point.rows} rows ({point.positives} buyers)"
        expected = lookup(point.model_version)
        failures = []
        if point.auc < floor:
            failures.append(f"below the floor {floor:.2f}")
        if expected is not None and point.auc < expected - tolerance:
            failures.append(f"more than {tolerance:.2f} below its test AUC {expected:.3f}")
        if failures:
            holds = True
            reasons.append(f"{figures} is {' and '.join(failures)}")
        else:
            versus = (
                f"within {tolerance:.2f} of its test AUC {expected:.3f}" if expected is not None else "test AUC unknown"
            )
            reasons.append(f"{figures} is at or above the floor {floor:.2f}, {versus}")
    return holds, "; ".join(reasons)


# The plot ----------------------------------------------------------------------------------------


def _figure(points: Sequence[AccuracyPoint], floor: float | None) -> Any:
    """Realised AUC per score date, one line per model version (segment "all"), the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    overall = [p for p in points if p.segment == ALL and p.auc is not None]
    for version in sorted({p.model_version for p in overall}, key=lambda v: (len(v), v)):
        mine = sorted((p for p in overall if p.model_version == version), key=lambda p: p.score_date)
        dates = [pd.Timestamp(p.score_date) for p in mine]
        aucs = [p.auc for p in mine if p.auc is not None]  # all of them: `overall` has an AUC
        axes.plot(dates, aucs, marker="o", label=f"version {version}")
    if floor is not None:
        axes.axhline(floor, color="red", linestyle="--", label=f"floor {floor:.2f}")
    if not overall:
        axes.text(0.5, 0.5, "no score date has complete labels yet", ha="center", va="center", transform=axes.transAxes)
    axes.set(xlabel="score date", ylabel="realised AUC", ylim=(0.0, 1.0))
    if overall:  # the dates' own span, padded (matplotlib would give one point years either side)
        first, last = (
            pd.Timestamp(d) for d in (min(p.score_date for p in overall), max(p.score_date for p in overall))
        )
        pad = max((last - first) * 0.05, pd.Timedelta(days=1))
        axes.set_xlim(first - pad, last + pad)
        axes.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%Y-%m-%d"))
    axes.set_title("Realised AUC of the batch scores")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    figure.autofmt_xdate()
    return figure


def _table(points: Sequence[AccuracyPoint]) -> str:
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "score date",
            "model version",
            "segment",
            "rows",
            "buyers",
            "AUC",
            "Brier",
            "calibration error",
            "mean score",
            "buyer rate",
        )
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(cell))}</td>"
            for cell in (
                p.score_date,
                p.model_version,
                p.segment,
                p.rows,
                p.positives,
                "n/a" if p.auc is None else f"{p.auc:.4f}",
                f"{p.brier:.4f}",
                f"{p.calibration_error:.4f}",
                f"{p.mean_score:.4f}",
                f"{p.positive_rate:.4f}",
            )
        )
        + "</tr>"
        for p in sorted(points, key=_sort_key)
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def accuracy_plot_html(points: Sequence[AccuracyPoint], floor: float | None = None) -> str:
    """The check's report: the AUC chart as an inline PNG and the table of every point."""
    style = "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Realised accuracy</title>'
        f"<style>{style}</style></head><body><h1>Realised accuracy of the batch scores</h1>"
        f"{png_img(_figure(points, floor))}{_table(points)}</body></html>"
    )


def write_accuracy_plot(settings: Settings, points: Sequence[AccuracyPoint]) -> str:
    """Store the chart as a PNG (for people and the demo summary); return its URI."""
    storage = Storage(settings)
    storage.write_bytes(PLOT_KEY, png_bytes(_figure(points, settings.accuracy_auc_floor)))
    return storage.uri(PLOT_KEY)
