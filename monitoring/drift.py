"""Drift between two distributions, from small profiles instead of the full frames.

A `Profile` holds, per column, 1,000 quantiles (numeric) or the category counts (categorical):
a few kilobytes whatever the row count. The reference profile is computed once at training and
stored with the model version; the current one is one Spark aggregation over the rows where they
live (or the quantiles of a bounded uniform sample). `detect_drift` compares the two with the
methods and thresholds Evidently uses by default on more than 1,000 rows (normed Wasserstein
distance for numeric columns, Jensen-Shannon distance for categorical ones and numeric ones with at
most five values; drift at a distance >= 0.1), so its verdicts agree with Evidently's
`DataDriftPreset` (measured in benchmarks/drift.py) at a fraction of the time. Evidently still
renders the HTML report that people look at, from bounded samples.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as sf
from scipy.spatial import distance

from propensity import features as F
from propensity.errors import PropensityError
from propensity.settings import Settings

# tenure_days and orders_total grow with the calendar for everyone: their shift is not a change in behaviour.
MONITORED_NUMERIC = [c for c in F.ACTIVITY_FEATURES if c not in ("tenure_days", "orders_total")] + ["score"]
MONITORED_CATEGORICAL = list(F.CATEGORICAL_FEATURES)
MONITORED = [*MONITORED_NUMERIC, *MONITORED_CATEGORICAL]

# Quantiles at the midpoints of 1,000 equal probability steps: W1 = integral of |Q_ref - Q_cur|.
QUANTILE_GRID = (np.arange(1000) + 0.5) / 1000
# Spark's percentile_approx rank error is 1/accuracy of the rows: far below one grid step.
SPARK_QUANTILE_ACCURACY = 10_000
# Categories beyond the most frequent ones are counted together (a high-cardinality column stays small).
MAX_CATEGORIES = 100
OTHER = "__other__"
# Evidently's rule: a numeric column with at most this many values is compared as categories.
FEW_VALUES = 5

NumericMethod = Literal["wasserstein", "psi"]
CategoricalMethod = Literal["jensenshannon", "psi"]


@dataclass(frozen=True)
class ColumnProfile:
    kind: Literal["numeric", "categorical"]
    rows: int  # non-null values
    nulls: int = 0
    quantiles: tuple[float, ...] = ()
    mean: float = 0.0
    std: float = 0.0
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    rows: int
    columns: Mapping[str, ColumnProfile]

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": {name: asdict(c) for name, c in self.columns.items()}}

    @classmethod
    def from_json(cls, content: Mapping[str, Any]) -> Profile:
        columns = {
            name: ColumnProfile(**{**c, "quantiles": tuple(c["quantiles"]), "counts": dict(c["counts"])})
            for name, c in content["columns"].items()
        }
        return cls(rows=int(content["rows"]), columns=columns)


@dataclass(frozen=True)
class DriftConfig:
    numeric_method: NumericMethod = "wasserstein"
    categorical_method: CategoricalMethod = "jensenshannon"
    numeric_threshold: float = 0.1
    categorical_threshold: float = 0.1
    column_thresholds: Mapping[str, float] = field(default_factory=dict)
    share_threshold: float = 0.3

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftConfig:
        unknown = sorted(set(settings.drift_column_thresholds) - set(MONITORED))
        if unknown:
            raise PropensityError(
                f"drift_column_thresholds names columns that are not monitored: {', '.join(unknown)} "
                f"(monitored: {', '.join(MONITORED)})"
            )
        return cls(
            numeric_method=settings.drift_numeric_method,
            categorical_method=settings.drift_categorical_method,
            numeric_threshold=settings.drift_numeric_threshold,
            categorical_threshold=settings.drift_categorical_threshold,
            column_thresholds=dict(settings.drift_column_thresholds),
            share_threshold=settings.drift_share_threshold,
        )


@dataclass(frozen=True)
class ColumnDrift:
    method: str
    distance: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    drift_detected: bool
    drifted_share: float
    drifted_columns: int
    columns: Mapping[str, ColumnDrift]
    reference_rows: int
    current_rows: int
    skipped: tuple[str, ...] = ()  # columns without values on one side

    def distances(self) -> dict[str, float]:
        return {name: c.distance for name, c in self.columns.items()}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Profiles ---------------------------------------------------------------------------------------


def profile_frame(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> Profile:
    """Profile of an in-memory frame: a bounded sample, or the reference rows at training."""
    _require(list(frame.columns), [*numeric, *categorical])
    columns: dict[str, ColumnProfile] = {}
    for name in numeric:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        present = values[~np.isnan(values)]
        columns[name] = _numeric_profile(
            len(present),
            len(values) - len(present),
            np.quantile(present, QUANTILE_GRID, method="inverted_cdf") if len(present) else np.array([]),
            float(present.mean()) if len(present) else 0.0,
            float(present.std()) if len(present) else 0.0,
        )
    for name in categorical:
        values = frame[name].dropna().astype(str)
        columns[name] = _categorical_profile(values.value_counts().to_dict(), int(frame[name].isna().sum()))
    return Profile(rows=len(frame), columns=columns)


def reference_profile(frame: pd.DataFrame) -> Profile:
    """The profile stored with a model at training: its test rows and its scores on them."""
    numeric = [c for c in MONITORED_NUMERIC if c in frame.columns]
    return profile_frame(frame, numeric, [c for c in MONITORED_CATEGORICAL if c in frame.columns])


def profile_spark(frame: DataFrame, numeric: list[str], categorical: list[str]) -> Profile:
    """Profile computed where the rows live: one Spark aggregation for the numeric columns, one
    grouped count for the categorical ones; only the profile comes back to the driver."""
    _require(frame.columns, [*numeric, *categorical])
    grid = sf.array(*[sf.lit(float(p)) for p in QUANTILE_GRID])
    aggregations = [sf.count(sf.lit(1)).alias("__rows")]
    for i, name in enumerate(numeric):
        value = sf.col(name).cast("double")
        aggregations += [
            sf.percentile_approx(value, grid, SPARK_QUANTILE_ACCURACY).alias(f"q{i}"),
            sf.avg(value).alias(f"m{i}"),
            sf.stddev_pop(value).alias(f"s{i}"),
            sf.count(value).alias(f"n{i}"),
        ]
    row = frame.agg(*aggregations).first()
    assert row is not None
    rows = int(row["__rows"])
    columns: dict[str, ColumnProfile] = {}
    for i, name in enumerate(numeric):
        present = int(row[f"n{i}"])
        columns[name] = _numeric_profile(
            present,
            rows - present,
            np.asarray(row[f"q{i}"] or [], dtype=float),
            float(row[f"m{i}"] or 0.0),
            float(row[f"s{i}"] or 0.0),
        )
    if categorical:
        pairs = sf.explode(
            sf.array(
                *[
                    sf.struct(sf.lit(name).alias("column"), sf.col(name).cast("string").alias("value"))
                    for name in categorical
                ]
            )
        ).alias("pair")
        counted = frame.select(pairs).groupBy("pair.column", "pair.value").count().collect()
        for name in categorical:
            counts = {r["value"]: int(r["count"]) for r in counted if r["column"] == name and r["value"] is not None}
            nulls = sum(int(r["count"]) for r in counted if r["column"] == name and r["value"] is None)
            columns[name] = _categorical_profile(counts, nulls)
    return Profile(rows=rows, columns=columns)


def _require(available: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise PropensityError(f"cannot profile drift: columns missing: {', '.join(missing)}")


def _numeric_profile(rows: int, nulls: int, quantiles: np.ndarray, mean: float, std: float) -> ColumnProfile:
    return ColumnProfile("numeric", rows, nulls, tuple(float(q) for q in quantiles), mean=float(mean), std=float(std))


def _categorical_profile(counts: Mapping[str, int], nulls: int) -> ColumnProfile:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ordered[:MAX_CATEGORIES])
    rest = sum(n for _, n in ordered[MAX_CATEGORIES:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0) + rest
    return ColumnProfile("categorical", sum(counts.values()), nulls, counts=kept)


# Comparison -------------------------------------------------------------------------------------


def detect_drift(reference: Profile, current: Profile, config: DriftConfig) -> DriftResult:
    """Per-column distances and the overall verdict (drift when >= share_threshold of the columns drifted).

    Columns are those of the reference that the current profile has too; a column without values on
    one side (e.g. the request context of known customers in the inference log) is skipped, not drifted.
    """
    columns: dict[str, ColumnDrift] = {}
    skipped: list[str] = []
    for name, ref in reference.columns.items():
        cur = current.columns.get(name)
        if cur is None:
            continue
        if cur.kind != ref.kind:
            raise PropensityError(f"column {name} is {ref.kind} in the reference but {cur.kind} now")
        if not ref.rows or not cur.rows:
            skipped.append(name)
            continue
        columns[name] = _column_drift(name, ref, cur, config)
    drifted = sum(c.drifted for c in columns.values())
    share = drifted / len(columns) if columns else 0.0
    return DriftResult(
        drift_detected=bool(columns) and share >= config.share_threshold,
        drifted_share=share,
        drifted_columns=drifted,
        columns=columns,
        reference_rows=reference.rows,
        current_rows=current.rows,
        skipped=tuple(skipped),
    )


def _column_drift(name: str, ref: ColumnProfile, cur: ColumnProfile, config: DriftConfig) -> ColumnDrift:
    if ref.kind == "numeric":
        values = np.union1d(ref.quantiles, cur.quantiles)
        if len(values) > FEW_VALUES:
            method: str = config.numeric_method
            threshold = config.column_thresholds.get(name, config.numeric_threshold)
            value = wasserstein_normed(ref, cur) if method == "wasserstein" else psi(*_binned(ref, cur))
            return ColumnDrift(method, value, threshold, value >= threshold)
        ref_shares = _value_shares(ref, values)
        cur_shares = _value_shares(cur, values)
    else:
        categories = sorted(set(ref.counts) | set(cur.counts))
        ref_shares = np.array([ref.counts.get(c, 0) for c in categories], dtype=float) / ref.rows
        cur_shares = np.array([cur.counts.get(c, 0) for c in categories], dtype=float) / cur.rows
    method = config.categorical_method
    threshold = config.column_thresholds.get(name, config.categorical_threshold)
    value = (
        float(distance.jensenshannon(ref_shares, cur_shares))
        if method == "jensenshannon"
        else psi(ref_shares, cur_shares)
    )
    return ColumnDrift(method, value, threshold, value >= threshold)


def wasserstein_normed(ref: ColumnProfile, cur: ColumnProfile) -> float:
    """W1 between the two distributions (mean gap of their quantile functions), over the reference's
    standard deviation (at least 0.001), as Evidently norms it."""
    gap = float(np.mean(np.abs(np.asarray(ref.quantiles) - np.asarray(cur.quantiles))))
    return gap / max(ref.std, 0.001)


def _value_shares(profile: ColumnProfile, values: np.ndarray) -> np.ndarray:
    """Share of each value, from the quantile grid (resolution 1/1000)."""
    quantiles = np.asarray(profile.quantiles)
    return np.array([(quantiles == v).mean() for v in values])


def _binned(ref: ColumnProfile, cur: ColumnProfile, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Shares of both distributions in the reference's decile bins (for PSI)."""
    ref_q = np.asarray(ref.quantiles)
    edges = np.unique(np.quantile(ref_q, np.linspace(0, 1, bins + 1)[1:-1]))

    def shares(quantiles: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, quantiles, side="right"), minlength=len(edges) + 1) / len(quantiles)

    return shares(ref_q), shares(np.asarray(cur.quantiles))


def psi(ref_shares: np.ndarray, cur_shares: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index; empty bins count as `floor` so the logarithm stays finite."""
    r = np.clip(ref_shares, floor, None)
    c = np.clip(cur_shares, floor, None)
    return float(np.sum((c - r) * np.log(c / r)))


# Sampling and the human-readable report ---------------------------------------------------------


def sample_spark(frame: DataFrame, rows: int, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """A bounded uniform sample of a Spark frame of `rows` rows, for the HTML report."""
    if rows <= max_rows:
        return frame.toPandas()
    return frame.sample(fraction=min(1.0, 1.1 * max_rows / rows), seed=seed).limit(max_rows).toPandas()


def _evidently_snapshot(reference: pd.DataFrame, current: pd.DataFrame, share_threshold: float) -> Any:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [c for c in MONITORED_NUMERIC if c in reference.columns and c in current.columns]
    categorical = [c for c in MONITORED_CATEGORICAL if c in reference.columns and c in current.columns]
    categorical = [c for c in categorical if current[c].notna().any() and reference[c].notna().any()]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    columns = numeric + categorical
    return Report([DataDriftPreset(drift_share=share_threshold)]).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )


def evidently_html(reference: pd.DataFrame, current: pd.DataFrame, share_threshold: float) -> str:
    """Evidently's data-drift report of two (sampled) frames, for people to look at."""
    snapshot = _evidently_snapshot(reference, current, share_threshold)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "drift.html"
        snapshot.save_html(str(path))
        return path.read_text()


def evidently_result(reference: pd.DataFrame, current: pd.DataFrame, share_threshold: float) -> DriftResult:
    """Evidently's own verdict on full frames (over 1,000 rows, where its tests are distances): the
    baseline the benchmark and the tests compare `detect_drift` with."""
    metrics = _evidently_snapshot(reference, current, share_threshold).dict()["metrics"]
    counts = next(m["value"] for m in metrics if m["metric_name"].startswith("DriftedColumnsCount"))
    per_column = {}
    for m in metrics:
        if m["metric_name"].startswith("ValueDrift"):
            method = str(m["config"].get("method") or "")
            threshold = float(m["config"].get("threshold") or 0.1)
            value = float(m["value"])
            per_column[m["config"]["column"]] = ColumnDrift(method, value, threshold, value >= threshold)
    return DriftResult(
        drift_detected=float(counts["share"]) >= share_threshold,
        drifted_share=float(counts["share"]),
        drifted_columns=int(counts["count"]),
        columns=per_column,
        reference_rows=len(reference),
        current_rows=len(current),
    )
