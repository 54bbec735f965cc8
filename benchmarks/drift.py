"""Drift-check benchmark: our profile-based check vs Evidently's DataDriftPreset on the full frames.

The issue's target: on --rows reference and --rows current rows of the monitored columns (12 numeric
including the score, 2 categorical), our check takes at most 0.2x Evidently's time and gives the same
verdict on at least 95% of the columns, over a set of synthetic shifts (no change, mean shifts of
several sizes, scale changes, category mix changes and a combined one), all measured in one run.

Per scenario, interleaved, median of --repeats:
* Evidently: `evidently_result(reference, current, 0.3)` on the in-memory pandas frames;
* ours, production path: `profile_spark(spark.read.parquet(current))` + `detect_drift` against the
  reference profile, on a warm local Spark session (the current frame is written to Parquet once,
  untimed, in 8 row groups so Spark splits it over the cores; the reference profile is computed
  once per run with `profile_frame`, as at training, and its time is reported on its own);
* ours, in-memory path: `profile_frame(current)` + `detect_drift` (the bounded-sample and
  inference-log path).
Verdicts are compared column by column (ours on the Spark path vs Evidently's, and the in-memory
path too) and for the dataset; every column where they differ is listed with both distances.

The synthetic columns are shaped like the real ones: gamma-mixed Poisson order counts, lognormal
order values and revenues (zero without orders), a few-valued column (avg_items, four values, which
both sides compare as categories), days since the last order uniform over a year, a beta score and
two categorical columns with unequal shares. Seeds are fixed: the verdicts depend only on --rows.

Usage: `python benchmarks/drift.py [--rows 1000000] [--repeats 3] [--scenarios no-change shift-0.1 ...]
[--out FILE]`; prints Markdown that docs/benchmarks.md records (and writes it to FILE).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.drift import (
    MONITORED_CATEGORICAL,
    MONITORED_NUMERIC,
    DriftConfig,
    DriftResult,
    Profile,
    detect_drift,
    evidently_result,
    profile_frame,
    profile_spark,
)
from propensity.settings import get_settings
from propensity.spark import spark_session

TIME_TARGET = 0.2  # ours / Evidently, total over the scenarios
AGREEMENT_TARGET = 0.95  # share of (scenario, column) verdicts that agree
SHARE_THRESHOLD = 0.3  # Evidently's default drift_share, and DriftConfig's
CLOSEST_CALLS = 8  # the (scenario, column) pairs nearest the threshold, listed with both distances
ROW_GROUPS = 8  # of the current frame's Parquet file
REFERENCE_SEED = 1
CURRENT_SEED = 2

COUNTRIES = ["DE", "FR", "GB", "NL", "ES", "IT"]
COUNTRY_SHARES = [0.35, 0.20, 0.15, 0.12, 0.10, 0.08]
CHANNELS = ["web", "app", "social"]
CHANNEL_SHARES = [0.55, 0.35, 0.10]

# The columns each kind of change touches (five of fourteen: 0.36 of the columns, above the 0.3 share).
SHIFTED = ["revenue_30d", "avg_order_value", "days_since_last_order", "interval_cv", "score"]
SCALED = ["revenue_30d", "revenue_90d", "avg_order_value", "purchase_interval_days", "recency_ratio"]


@dataclass(frozen=True)
class Change:
    """What differs in the current frame: SHIFTED columns move by `shift` reference standard
    deviations, SCALED columns are multiplied by `scale`, and `mix` of the rows move from DE to GB/ES
    and from web to social."""

    shift: float = 0.0
    scale: float = 1.0
    mix: float = 0.0


SCENARIOS: dict[str, Change] = {
    "no-change": Change(),
    "shift-0.05": Change(shift=0.05),  # well below the 0.1 threshold
    "shift-0.1": Change(shift=0.1),  # on the threshold (sampling noise puts the distances just above it)
    "shift-0.2": Change(shift=0.2),
    "shift-0.5": Change(shift=0.5),
    "scale-1.1": Change(scale=1.1),  # normed distances 0.07-0.12 depending on the column's shape
    "scale-1.3": Change(scale=1.3),
    "scale-1.5": Change(scale=1.5),
    "mix-small": Change(mix=0.05),  # Jensen-Shannon ~0.05
    "mix-large": Change(mix=0.15),  # Jensen-Shannon ~0.14
    "combined": Change(shift=0.2, scale=1.3, mix=0.15),
}


def shop_frame(rows: int, seed: int, mix: float = 0.0) -> pd.DataFrame:
    """The monitored columns of `rows` customers, shaped like the feature table's and the scores."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(1.5, 2.0, rows)  # each customer's orders per 90 days: overdispersed counts
    orders_30d = rng.poisson(rate / 3).astype(float)
    orders_90d = rng.poisson(rate).astype(float)
    orders_prev_90d = rng.poisson(rate * 0.9).astype(float)
    avg_order_value = rng.lognormal(3.5, 0.6, rows)
    days_since = np.floor(rng.uniform(0, 366, rows))
    interval = rng.lognormal(np.log(30.0), 0.7, rows)
    countries = [COUNTRY_SHARES[0] - mix, COUNTRY_SHARES[1], COUNTRY_SHARES[2] + mix / 2, *COUNTRY_SHARES[3:]]
    countries[4] += mix / 2
    frame = {
        "orders_30d": orders_30d,
        "orders_90d": orders_90d,
        "revenue_30d": orders_30d * avg_order_value * rng.lognormal(0.0, 0.2, rows),
        "revenue_90d": orders_90d * avg_order_value * rng.lognormal(0.0, 0.2, rows),
        "avg_order_value": avg_order_value,
        "avg_items": rng.choice([1.0, 2.0, 3.0, 4.0], rows, p=[0.55, 0.25, 0.12, 0.08]),
        "days_since_last_order": days_since,
        "orders_prev_90d": orders_prev_90d,
        "purchase_interval_days": interval,
        "interval_cv": rng.gamma(4.0, 0.25, rows),
        "recency_ratio": days_since / interval,
        "score": rng.beta(2.0, 5.0, rows),
        "country": rng.choice(COUNTRIES, rows, p=countries),
        "channel": rng.choice(CHANNELS, rows, p=[CHANNEL_SHARES[0] - mix, CHANNEL_SHARES[1], CHANNEL_SHARES[2] + mix]),
    }
    assert list(frame) == [*MONITORED_NUMERIC, *MONITORED_CATEGORICAL], list(frame)
    return pd.DataFrame(frame)


def current_frame(rows: int, change: Change, reference_std: dict[str, float]) -> pd.DataFrame:
    frame = shop_frame(rows, CURRENT_SEED, mix=change.mix)
    if change.shift:
        for name in SHIFTED:
            frame[name] += change.shift * reference_std[name]
        frame["score"] = frame["score"].clip(1e-6, 1 - 1e-6)
    if change.scale != 1.0:
        for name in SCALED:
            frame[name] *= change.scale
    return frame


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = func()
    return time.perf_counter() - t0, result


@dataclass
class Outcome:
    evidently_s: float
    spark_s: float
    memory_s: float
    evidently: DriftResult
    spark: DriftResult
    memory: DriftResult


def agreeing(ours: DriftResult, theirs: DriftResult) -> tuple[int, int]:
    names = set(ours.columns) | set(theirs.columns)
    same = sum(
        1
        for n in names
        if n in ours.columns and n in theirs.columns and ours.columns[n].drifted == theirs.columns[n].drifted
    )
    return same, len(names)


def run_scenario(
    spark: Any,
    reference: pd.DataFrame,
    reference_profile: Profile,
    change: Change,
    reference_std: dict[str, float],
    work: Path,
    repeats: int,
) -> Outcome:
    rows = len(reference)
    current = current_frame(rows, change, reference_std)
    path = work / "current.parquet"
    # Untimed: the rows already sit in the lake in production, in several files or row groups that
    # Spark reads in parallel (one row group would be one task, one core).
    current.to_parquet(path, index=False, row_group_size=-(-rows // ROW_GROUPS))
    config = DriftConfig()

    def evidently() -> DriftResult:
        return evidently_result(reference, current, SHARE_THRESHOLD)

    def ours_spark() -> DriftResult:
        profile = profile_spark(spark.read.parquet(str(path)), MONITORED_NUMERIC, MONITORED_CATEGORICAL)
        return detect_drift(reference_profile, profile, config)

    def ours_memory() -> DriftResult:
        return detect_drift(reference_profile, profile_frame(current, MONITORED_NUMERIC, MONITORED_CATEGORICAL), config)

    times: dict[str, list[float]] = {"evidently": [], "spark": [], "memory": []}
    results: dict[str, DriftResult] = {}
    for _ in range(repeats):  # interleaved, so background load on the shared machine hits all alike
        for name, way in (("evidently", evidently), ("spark", ours_spark), ("memory", ours_memory)):
            seconds, results[name] = timed(way)
            times[name].append(seconds)
    path.unlink()
    return Outcome(
        evidently_s=statistics.median(times["evidently"]),
        spark_s=statistics.median(times["spark"]),
        memory_s=statistics.median(times["memory"]),
        evidently=results["evidently"],
        spark=results["spark"],
        memory=results["memory"],
    )


def jvm_peak_rss_mb(spark: Any) -> float | None:
    """Peak RSS of Spark's JVM (the driver and, locally, the executors), when /proc shows it."""
    try:
        pid = spark.sparkContext._gateway.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
    except (AttributeError, OSError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def verdict(result: DriftResult) -> str:
    return f"{'drift' if result.drift_detected else 'no drift'} ({result.drifted_columns}/{len(result.columns)})"


def met(ok: bool) -> str:
    return "**target met**" if ok else "**target missed**"


def report(
    args: argparse.Namespace,
    outcomes: dict[str, Outcome],
    facts: dict[str, Any],
) -> list[str]:
    rows, repeats = args.rows, args.repeats
    columns = len(MONITORED_NUMERIC) + len(MONITORED_CATEGORICAL)
    out = [
        f"{rows:,} reference and {rows:,} current rows x {columns} monitored columns "
        f"({len(MONITORED_NUMERIC)} numeric, {len(MONITORED_CATEGORICAL)} categorical); median of {repeats}; "
        f"{facts['cpus']} CPUs ({facts['machine']}), Evidently {facts['evidently']}, Spark {facts['spark']} "
        f"({facts['master']}).",
        "",
        f"Reference profile, once per model as at training (`profile_frame` of the reference rows): "
        f"{facts['reference_profile_s']:.2f} s. The same with `profile_spark` on the reference Parquet, "
        f"first job of a cold session (untimed warm-up otherwise): {facts['reference_spark_s']:.2f} s.",
        "",
        "| scenario | Evidently s | ours, Spark s | ratio | ours, in-memory s | ratio | columns agreeing (Spark) "
        "| columns agreeing (in-memory) | dataset verdict: ours (Spark) | dataset verdict: Evidently |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, o in outcomes.items():
        same, total = agreeing(o.spark, o.evidently)
        same_m, total_m = agreeing(o.memory, o.evidently)
        out.append(
            f"| {name} | {o.evidently_s:.2f} | {o.spark_s:.2f} | {o.spark_s / o.evidently_s:.2f} | "
            f"{o.memory_s:.2f} | {o.memory_s / o.evidently_s:.2f} | {same}/{total} | {same_m}/{total_m} | "
            f"{verdict(o.spark)} | {verdict(o.evidently)} |"
        )
    evidently_total = sum(o.evidently_s for o in outcomes.values())
    spark_total = sum(o.spark_s for o in outcomes.values())
    memory_total = sum(o.memory_s for o in outcomes.values())
    spark_ratio, memory_ratio = spark_total / evidently_total, memory_total / evidently_total
    # If the reference profile were not stored with the model but recomputed at every check.
    unstored = (spark_total + len(outcomes) * facts["reference_profile_s"]) / evidently_total
    agree = [agreeing(o.spark, o.evidently) for o in outcomes.values()]
    agree_m = [agreeing(o.memory, o.evidently) for o in outcomes.values()]
    share = sum(a for a, _ in agree) / sum(t for _, t in agree)
    share_m = sum(a for a, _ in agree_m) / sum(t for _, t in agree_m)
    dataset = sum(o.spark.drift_detected == o.evidently.drift_detected for o in outcomes.values())
    dataset_m = sum(o.memory.drift_detected == o.evidently.drift_detected for o in outcomes.values())
    gaps = [
        abs(o.spark.columns[c].distance - o.evidently.columns[c].distance)
        for o in outcomes.values()
        for c in o.spark.columns
        if c in o.evidently.columns
    ]
    out += [
        "",
        f"Totals over {len(outcomes)} scenarios (target: at most {TIME_TARGET}x Evidently's time, the same verdict "
        f"on at least {AGREEMENT_TARGET:.0%} of the columns):",
        "",
        f"* time, Spark path: {spark_total:.2f} s vs Evidently {evidently_total:.2f} s = {spark_ratio:.3f}x: "
        f"{met(spark_ratio <= TIME_TARGET)}",
        f"* time, in-memory path: {memory_total:.2f} s = {memory_ratio:.3f}x: {met(memory_ratio <= TIME_TARGET)}",
        f"* time, Spark path with the reference profile recomputed at every check (not stored): {unstored:.3f}x",
        f"* per-column agreement, Spark path: {sum(a for a, _ in agree)}/{sum(t for _, t in agree)} = {share:.1%}: "
        f"{met(share >= AGREEMENT_TARGET)}",
        f"* per-column agreement, in-memory path: {sum(a for a, _ in agree_m)}/{sum(t for _, t in agree_m)} "
        f"= {share_m:.1%}: {met(share_m >= AGREEMENT_TARGET)}",
        f"* dataset verdict agreement: Spark path {dataset}/{len(outcomes)}, "
        f"in-memory path {dataset_m}/{len(outcomes)}",
        f"* largest distance gap, ours (Spark) vs Evidently, over all columns and scenarios: {max(gaps):.4f}",
        f"* peak RSS of this process (pandas, Evidently, the profiles): {facts['peak_rss_mb']:,.0f} MB; "
        f"Spark's JVM: {facts['jvm_rss']}",
        "",
    ]
    disagreements = [
        (scenario, path, column, ours, o.evidently.columns[column])
        for scenario, o in outcomes.items()
        for path, result in (("Spark", o.spark), ("in-memory", o.memory))
        for column, ours in result.columns.items()
        if column in o.evidently.columns and ours.drifted != o.evidently.columns[column].drifted
    ]
    missing = [
        (scenario, sorted(set(o.spark.columns) ^ set(o.evidently.columns)))
        for scenario, o in outcomes.items()
        if set(o.spark.columns) != set(o.evidently.columns)
    ]
    if not disagreements:
        out.append("No column's verdict differs from Evidently's.")
    else:
        out += [
            "Columns whose verdict differs from Evidently's:",
            "",
            "| scenario | our path | column | ours: method, distance | Evidently: method, distance | threshold "
            "| drifted: ours / Evidently |",
            "|---|---|---|---|---|---|---|",
        ]
        for scenario, path, column, ours, theirs in disagreements:
            out.append(
                f"| {scenario} | {path} | {column} | {ours.method}, {ours.distance:.4f} | "
                f"{theirs.method}, {theirs.distance:.4f} | {ours.threshold:g} | "
                f"{'yes' if ours.drifted else 'no'} / {'yes' if theirs.drifted else 'no'} |"
            )
    pairs = [
        (scenario, column, ours, o.evidently.columns[column])
        for scenario, o in outcomes.items()
        for column, ours in o.spark.columns.items()
        if column in o.evidently.columns
    ]
    calls = sorted(pairs, key=lambda p: min(abs(p[2].distance - p[2].threshold), abs(p[3].distance - p[3].threshold)))[
        :CLOSEST_CALLS
    ]
    out += [
        "",
        f"The {CLOSEST_CALLS} closest calls (Spark path; distance nearest the threshold on either side):",
        "",
        "| scenario | column | ours: method, distance | Evidently: method, distance | threshold "
        "| drifted: ours / Evidently |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, column, ours, theirs in calls:
        out.append(
            f"| {scenario} | {column} | {ours.method}, {ours.distance:.4f} | {theirs.method}, {theirs.distance:.4f} | "
            f"{ours.threshold:g} | {'yes' if ours.drifted else 'no'} / {'yes' if theirs.drifted else 'no'} |"
        )
    for scenario, names in missing:
        out.append(f"\n{scenario}: columns judged by only one side: {', '.join(names)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the reference and of each current frame")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    started = time.monotonic()
    import evidently

    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}",
        "evidently": evidently.__version__,
    }
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = get_settings(home=work / "home")
        spark = spark_session(settings, "drift-benchmark")
        facts["spark"], facts["master"] = spark.version, settings.spark_master
        reference = shop_frame(args.rows, REFERENCE_SEED)
        reference_std = {name: float(reference[name].std(ddof=0)) for name in MONITORED_NUMERIC}
        facts["reference_profile_s"], reference_profile = timed(
            lambda: profile_frame(reference, MONITORED_NUMERIC, MONITORED_CATEGORICAL)
        )
        # Warm-ups, untimed in the table: the Spark session's first job, Evidently's imports.
        reference.to_parquet(work / "reference.parquet", index=False, row_group_size=-(-args.rows // ROW_GROUPS))

        def spark_reference() -> Profile:
            frame = spark.read.parquet(str(work / "reference.parquet"))
            return profile_spark(frame, MONITORED_NUMERIC, MONITORED_CATEGORICAL)

        facts["reference_spark_s"], _ = timed(spark_reference)
        spark_reference()  # the first jobs of a session still compile code: warm it twice
        evidently_result(reference.head(5000), reference.tail(5000), SHARE_THRESHOLD)
        for name in args.scenarios:
            outcomes[name] = run_scenario(
                spark, reference, reference_profile, SCENARIOS[name], reference_std, work, args.repeats
            )
            o = outcomes[name]
            print(
                f"done {name}: Evidently {o.evidently_s:.2f} s, Spark {o.spark_s:.2f} s, in-memory {o.memory_s:.2f} s",
                file=sys.stderr,
                flush=True,
            )
        jvm = jvm_peak_rss_mb(spark)
        facts["jvm_rss"] = f"{jvm:,.0f} MB (VmHWM)" if jvm is not None else "not readable"
        spark.stop()
    facts["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    lines = report(args, outcomes, facts)
    lines.append(f"\n({time.monotonic() - started:.0f} s in all)")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
