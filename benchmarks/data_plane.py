"""Data-plane benchmark: how feature build, training set, batch scoring and the online push scale.

All figures of one invocation come from one run on one machine; compare ratios, not seconds:
* scale ladder: wall time of each stage at every size (median of --repeats up to 100k customers,
  one run above), and the growth ratio from one size to the next;
* driver memory: peak RSS of the Python driver of a batch-scoring run (a subprocess per size);
* scoring: rows/s of our job vs `mlflow.pyfunc.spark_udf` vs an identity pandas UDF over the same
  columns (the cost of moving data between the JVM and Python, the floor), median of --repeats;
* online push: rows/s of our push vs `feast materialize` of the same view and snapshot, on SQLite (the
  local store) and on Redis (the cluster store; a redis-server the benchmark starts on a free port).
  The store is emptied before each timed push and must hold every row after it.

Table formats (`--tables-against REV`): the same ladder (ingest, feature build, training set, batch
scoring, online push) with the tables of this checkout (Iceberg, on local disk at every size and on
an S3 store at --s3-at, SeaweedFS and a PostgreSQL catalog the benchmark starts) and with those of
commit REV (the hand-written tables), exported beside it by `git archive`. Each side runs in its own
process on the same generated input; the sides alternate within each size.

Usage: `python benchmarks/data_plane.py [--sizes 10000 100000 1000000] [--repeats 3] [--days 480]`
or `python benchmarks/data_plane.py --tables-against 3edc092 --sizes 100000 1000000 --s3-at 100000`;
prints Markdown that docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from components.batch_scoring import apply_model, publish_latest_scores, score_customers
from components.features import build_training_set, push_snapshot_online
from components.registry import Decision, register_models
from components.training import train_candidates, train_realtime_model
from feature_repo.definitions import ACTIVITY_VIEW
from feature_repo.store import feature_repo, feature_store
from propensity import features as F
from propensity.catalog import table_name
from propensity.feature_table import (
    FEATURE_SNAPSHOTS,
    build_feature_table,
    computed_snapshots,
    feature_dates,
    feature_snapshot,
    scoring_features,
)
from propensity.lake import ingest, last_data_date
from propensity.settings import Settings, get_settings
from propensity.spark import spark_session
from propensity.storage import Storage
from propensity.synthetic import generate
from propensity.tables import scan_batches
from propensity.tracking import CHAMPION, alias_version, configure, promote

# The Redis server is started as the tests start theirs (tests/services.py, in the checkout beside).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.services import postgres_server, redis_server, seaweedfs

FLOOR = "identity pandas UDF (floor)"
ACTIVITY = [F.ENTITY, F.EVENT_TIMESTAMP, *F.SNAPSHOT_FEATURES]  # the activity view's columns
LADDER_REPEAT_LIMIT = 100_000  # above this, one run per stage is enough (and all the machine can afford)


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = func()
    return time.perf_counter() - t0, result


def reset_online(settings: Settings) -> None:
    """Forget what was pushed, so the next push writes the whole snapshot again."""
    Storage(settings).delete(settings.online_pushes_key)


def reset_feature_table(spark: Any, settings: Settings) -> None:
    spark.sql(f"DROP TABLE IF EXISTS {table_name(settings, FEATURE_SNAPSHOTS)} PURGE")


def prepare(settings: Settings, customers: int, days: int, work: Path) -> dict[str, Any]:
    data = generate(customers=customers, days=days, seed=7)
    data.transactions.to_parquet(work / "tx.parquet", index=False)
    data.customers.to_parquet(work / "customers.parquet", index=False)
    facts: dict[str, Any] = {"customers": len(data.customers), "transactions": len(data.transactions)}
    del data
    seconds, _ = timed(lambda: ingest(settings, work / "tx.parquet", work / "customers.parquet"))
    facts["ingest_s"] = seconds
    return facts


def train_champion(settings: Settings, work: Path) -> None:
    build_training_set(settings, work / "training.parquet")
    candidate = train_candidates(settings, work / "training.parquet", [{"max_iter": 50}])[0]
    realtime = train_realtime_model(settings, work / "training.parquet")
    registered = register_models(settings, candidate.run_id, realtime, Decision.unchecked("promote", "bench"))
    promote(settings, registered.batch.version, registered.realtime.version)


def driver_peak_rss_mb(settings: Settings) -> float:
    """Batch scoring in its own process; its Python driver reports its own peak RSS (not the JVM's).

    VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a child forked from this (large)
    benchmark process would report the parent's memory as its own."""
    code = (
        "import json, re\n"
        "from components.batch_scoring import score_customers\n"
        "from propensity.settings import get_settings\n"
        "score_customers(get_settings())\n"
        "status = open('/proc/self/status').read()\n"
        "print(json.dumps({'rss_kb': int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))}))\n"
    )
    env = {**os.environ, **settings.as_env()}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["rss_kb"]) / 1024


def ladder_stage_times(settings: Settings, work: Path, repeats: int) -> dict[str, list[float]]:
    spark = spark_session(settings, "bench")
    as_of = last_data_date(settings)
    dates = feature_dates(settings, as_of)
    times: dict[str, list[float]] = {"feature build": [], "training set": [], "batch scoring": [], "online push": []}
    for _ in range(repeats):
        reset_feature_table(spark, settings)
        times["feature build"].append(timed(lambda: build_feature_table(spark, settings, dates))[0])
        feature_store(settings).apply(feature_repo(settings).objects)  # type: ignore[arg-type]
        if alias_version(settings, settings.model_name, CHAMPION) is None:
            train_champion(settings, work)
        times["training set"].append(timed(lambda: build_training_set(settings, work / "training.parquet"))[0])
        times["batch scoring"].append(timed(lambda: score_customers(settings))[0])
        reset_online(settings)
        version = computed_snapshots(settings)[str(as_of.date())]

        def push(version: str = version) -> None:
            push_snapshot_online(settings, ACTIVITY_VIEW, as_of, version, feature_snapshot(settings, as_of), ACTIVITY)
            publish_latest_scores(settings)

        times["online push"].append(timed(push)[0])
    return times


def noop_write(frame: Any) -> None:
    frame.write.format("noop").mode("overwrite").save()


def identity(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        yield pd.DataFrame({F.ENTITY: batch[F.ENTITY], "score": 0.0})


def scoring_comparison(settings: Settings, work: Path, repeats: int) -> dict[str, float]:
    """rows/s of three ways to score the same cached features with the same model."""
    spark = spark_session(settings, "bench")
    as_of = last_data_date(settings)
    path = work / "scoring-input"
    scoring_features(spark, settings, feature_snapshot(settings, as_of)).write.mode("overwrite").parquet(str(path))
    frame = spark.read.parquet(str(path))
    rows = frame.count()
    champion = alias_version(settings, settings.model_name, CHAMPION)
    assert champion is not None
    configure(settings)
    udf = mlflow.pyfunc.spark_udf(spark, champion.uri, result_type="double", env_manager="local")
    ways: dict[str, Callable[[], None]] = {
        "our job (mapInPandas, model once per worker)": lambda: noop_write(apply_model(frame, settings, champion)),
        "mlflow.pyfunc.spark_udf": lambda: noop_write(frame.select(F.ENTITY, udf(*F.BATCH_MODEL_FEATURES))),
        FLOOR: lambda: noop_write(
            frame.select(F.ENTITY, *F.BATCH_MODEL_FEATURES).mapInPandas(identity, f"{F.ENTITY} string, score double")
        ),
    }
    for way in ways.values():  # warm every path once (worker start, model load)
        way()
    results: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):  # interleaved, so background load hits all alike
        for name, way in ways.items():
            results[name].append(rows / timed(way)[0])
    return {name: statistics.median(values) for name, values in results.items()}


OURS_PUSH = "our push (batched write_to_online_store)"


def redis_settings(settings: Settings, redis: Any) -> Settings:
    """The same work dir with the Redis online store of the benchmark's own Redis server."""
    on_redis = settings.model_copy(update={"online_store": "redis", "redis_connection": redis.connection()})
    feature_store(on_redis).apply(feature_repo(on_redis).objects)  # type: ignore[arg-type]
    return on_redis


def online_rows_stored(settings: Settings, redis: Any | None) -> int:
    """Entity rows in the online store: Redis keys, or the SQLite table of the activity view."""
    if redis is not None:
        return int(redis.client().dbsize())
    import sqlite3

    project = settings.feast_project
    with sqlite3.connect(settings.feature_store_dir / "online_store.db") as db:
        table = f"{project}_{ACTIVITY_VIEW}"
        return int(db.execute(f'SELECT COUNT(DISTINCT entity_key) FROM "{table}"').fetchone()[0])  # nosec B608


def clear_online(settings: Settings, redis: Any | None) -> None:
    """Empty the online store, so that every timed push writes every row. Feast's Redis store skips a
    row whose event time is not newer than the stored one: pushing the same snapshot twice without
    this would time skipped work."""
    reset_online(settings)
    if redis is not None:
        redis.client().flushdb()
    else:
        import sqlite3

        with sqlite3.connect(settings.feature_store_dir / "online_store.db") as db:
            db.execute(f'DELETE FROM "{settings.feast_project}_{ACTIVITY_VIEW}"')  # nosec B608


def push_comparison(settings: Settings, repeats: int, redis: Any | None = None) -> dict[str, float]:
    """rows/s of our push vs `feast materialize` of the same view and snapshot, warm, interleaved; the
    store is emptied before each timed push and holds every row after it."""
    as_of = last_data_date(settings)
    version = computed_snapshots(settings)[str(as_of.date())]
    source = feature_snapshot(settings, as_of)
    batches = scan_batches(settings, source.name, 10**6, [F.ENTITY], source.snapshot_id, source.partition)
    rows = sum(len(batch) for batch in batches)
    store = feature_store(settings)
    start, end = (as_of - pd.Timedelta(seconds=1)).to_pydatetime(), (as_of + pd.Timedelta(seconds=1)).to_pydatetime()

    def ours() -> None:
        assert push_snapshot_online(settings, ACTIVITY_VIEW, as_of, version, source, ACTIVITY) == rows

    def feast_materialize() -> None:
        store.materialize(start_date=start, end_date=end, feature_views=[ACTIVITY_VIEW])

    ways = {OURS_PUSH: ours, "feast materialize": feast_materialize}
    results: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(repeats + 1):  # the first round warms both (Spark's Python workers, imports)
        for name, way in ways.items():
            clear_online(settings, redis)
            seconds, _ = timed(way)
            stored = online_rows_stored(settings, redis)
            if stored != rows:
                raise SystemExit(f"{name} left {stored} of {rows} rows in the online store: it did not write them all")
            if repeat:
                results[name].append(rows / seconds)
    return {name: statistics.median(values) for name, values in results.items()}


def push_comparisons(settings: Settings, work: Path, repeats: int) -> dict[str, dict[str, float]]:
    comparisons = {"push (SQLite, local)": push_comparison(settings, repeats)}
    if shutil.which("redis-server") is None:
        print("redis-server is not installed: no Redis push comparison", file=sys.stderr)
        return comparisons
    with redis_server(work / "redis") as redis:
        comparisons["push (Redis, cluster)"] = push_comparison(redis_settings(settings, redis), repeats, redis)
    return comparisons


def push_only(args: argparse.Namespace) -> None:
    """The push comparisons alone: the lake and the newest feature snapshot, then both pushes."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = get_settings(home=work / "home")
        prepare(settings, args.compare_at, args.days, work)
        as_of = last_data_date(settings)
        build_feature_table(spark_session(settings, "bench"), settings, [as_of])
        feature_store(settings).apply(feature_repo(settings).objects)  # type: ignore[arg-type]
        comparisons = push_comparisons(settings, work, args.repeats)
        spark_session(settings, "bench").stop()
    for name, result in comparisons.items():
        base = result["feast materialize"]
        print(f"| {name} at {args.compare_at:,} customers | rows/s | ratio to feast materialize |\n|---|---|---|")
        for way, rate in result.items():
            print(f"| {way} | {rate:,.0f} | {rate / base:.2f} |")
        print()


# One side of the table-format comparison, in its own process, importing the checkout it is given.
TABLES_SIDE = """
import json
import sys
from pathlib import Path

checkout, work = sys.argv[1], Path(sys.argv[2])
size, days, repeats = (int(value) for value in sys.argv[3:6])
sys.path[:0] = [checkout, checkout + "/benchmarks"]
import data_plane as bench
from propensity.settings import get_settings

settings = get_settings(**json.loads(sys.argv[6]))
facts = bench.prepare(settings, size, days, work)
times = bench.ladder_stage_times(settings, work, repeats)
times["ingest"] = [facts.pop("ingest_s")]
print("RESULT " + json.dumps({"facts": facts, "times": times}))
"""
HANDWRITTEN, ICEBERG_LOCAL, ICEBERG_S3 = "hand-written tables", "Iceberg, local disk", "Iceberg, S3 (SeaweedFS)"
STAGES = ["ingest", "feature build", "training set", "batch scoring", "online push"]


def run_side(
    checkout: Path, work: Path, size: int, args: argparse.Namespace, overrides: dict[str, str], env: dict[str, str]
) -> dict[str, Any]:
    """Prepare and time one side's ladder in a fresh process (its own Python driver and JVM). With
    --profile, the JVM records a Java Flight Recording beside the side's log, summarised after."""
    work.mkdir(parents=True)
    recording = work.parent / f"{work.name}.jfr"
    if args.profile:
        # Every socket read recorded (the profile's default keeps only those over 10 ms): S3 requests are short.
        flight = f"settings=profile,dumponexit=true,filename={recording},jdk.SocketRead#threshold=0ms"
        env = {**env, "JDK_JAVA_OPTIONS": f"-XX:StartFlightRecording={flight}"}
    # Only what the side is told: a PROPENSITY_* variable of this shell would reach one side and not the other.
    clean = {key: value for key, value in os.environ.items() if not key.startswith("PROPENSITY_")}
    command = [
        sys.executable,
        "-c",
        TABLES_SIDE,
        str(checkout),
        str(work),
        str(size),
        str(args.days),
        str(args.repeats),
    ]
    log = work.parent / f"{work.name}.log"
    with log.open("w") as err:
        done = subprocess.run(
            [*command, json.dumps(overrides)],
            cwd=checkout,
            env={**clean, **env},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise SystemExit(f"{work.name} failed ({done.returncode}): {log.read_text(errors='replace')[-3000:]}")
    shutil.rmtree(work, ignore_errors=True)
    result = dict(json.loads(results[-1].removeprefix("RESULT ")))
    print(f"{work.name}: {json.dumps(result)}", file=sys.stderr, flush=True)  # kept if a later side fails
    if args.profile:
        try:
            result["profile"] = jvm_profile(recording)
        except (ValueError, OSError, subprocess.SubprocessError) as error:  # the timings stand without it
            print(f"{work.name}: its flight recording could not be read: {error}", file=sys.stderr, flush=True)
    return result


# Where a JVM sample is spent: the first frame from the top of its stack in one of these packages.
PROFILE_AREAS = {
    "software.amazon.awssdk": "AWS SDK (S3 client)",
    "org.apache.iceberg.aws": "Iceberg S3FileIO",
    "org.apache.parquet": "Parquet",
    "org.apache.iceberg.shaded.org.apache.parquet": "Parquet",
    "org.apache.iceberg": "Iceberg",
    "org.sqlite": "catalog (SQLite JDBC)",
    "org.postgresql": "catalog (PostgreSQL JDBC)",
    "org.apache.spark.sql.execution.python": "Spark <-> Python (Arrow)",
    "org.apache.spark": "Spark",
}


# The units of a duration as `jfr print` writes it ("12.3 ms", "1 m 3 s", "2 h 5 m").
DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def jvm_profile(recording: Path) -> dict[str, Any]:
    """CPU samples of the JVM by area, and the time its threads waited on sockets by port (the S3
    endpoint, the catalog's database, Spark's Python workers), from a flight recording."""
    samples: dict[str, int] = {}
    waits: dict[str, float] = {}

    def events(kind: str, depth: int) -> Iterator[str]:
        command = ["jfr", "print", "--events", kind, "--stack-depth", str(depth), str(recording)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as printer:
            assert printer.stdout is not None
            yield from printer.stdout

    area = None
    for line in events("jdk.ExecutionSample", 40):
        text = line.strip()
        if text.startswith("jdk.ExecutionSample"):
            area = None
        elif area is None and "(" in text and "line:" in text:
            area = next((name for prefix, name in PROFILE_AREAS.items() if text.startswith(prefix + ".")), None)
        elif text == "}" and line.startswith("}"):
            key = area or "other (JDK, Scala, Netty, ...)"
            samples[key] = samples.get(key, 0) + 1
    duration = 0.0
    for line in events("jdk.SocketRead", 1):
        text = line.strip()
        if text.startswith("duration ="):
            tokens = text.split("=", 1)[1].split()
            pairs = list(zip(tokens[::2], tokens[1::2], strict=False))
            if len(tokens) % 2 or any(unit not in DURATION_UNITS for _, unit in pairs):
                raise ValueError(f"unknown duration format in the flight recording: {text}")
            duration = sum(float(value) * DURATION_UNITS[unit] for value, unit in pairs)
        elif text.startswith("port ="):
            port = text.split("=", 1)[1].strip()
            waits[port] = waits.get(port, 0.0) + duration
    recording.unlink(missing_ok=True)
    return {"cpu_samples": samples, "socket_wait_s": waits}


def export_commit(rev: str, into: Path) -> Path:
    """The checkout of `rev` beside this one: its files as committed (`git archive`), no .git."""
    into.mkdir()
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def tables_comparison(args: argparse.Namespace) -> None:
    """Each size: the hand-written tables of `--tables-against`, then Iceberg on local disk, then (at
    --s3-at) Iceberg on SeaweedFS's S3 API with its catalog in PostgreSQL."""
    here = Path(__file__).resolve().parents[1]
    sides: dict[int, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        root = Path(tmp)
        old = export_commit(args.tables_against, root / "handwritten")
        for size in args.sizes:
            sides[size] = {}
            sides[size][HANDWRITTEN] = run_side(
                old, root / f"old-{size}", size, args, {"home": str(root / f"old-{size}" / "home")}, {}
            )
            sides[size][ICEBERG_LOCAL] = run_side(
                here, root / f"new-{size}", size, args, {"home": str(root / f"new-{size}" / "home")}, {}
            )
            print(f"done {size}: {json.dumps(sides[size])}", file=sys.stderr, flush=True)
            if size != args.s3_at:
                continue
            with (
                seaweedfs(root / "s3", buckets=("bench",)) as store,
                postgres_server() as postgres,
                postgres.database("bench") as catalog,
            ):
                overrides = {
                    "home": str(root / f"s3-{size}" / "home"),
                    "tables": "s3://bench/tables",
                    "catalog": catalog,
                    "s3_endpoint_url": store.endpoint,
                    "s3_region": store.region,
                }
                sides[size][ICEBERG_S3] = run_side(here, root / f"s3-{size}", size, args, overrides, store.env)
                ports = {store.endpoint.rsplit(":", 1)[1]: "S3 endpoint", str(postgres.port): "catalog database"}
                sides[size][ICEBERG_S3]["ports"] = ports
            print(f"done {size} on S3: {json.dumps(sides[size][ICEBERG_S3])}", file=sys.stderr, flush=True)
    tables_report(args, sides)


def tables_report(args: argparse.Namespace, sides: dict[int, dict[str, dict[str, Any]]]) -> None:
    print(f"{args.days} days of history; median of {args.repeats} per stage (ingest: one run).\n")
    for size, results in sides.items():
        names = list(results)
        print(
            f"| {size:,} customers | "
            + " | ".join(names)
            + f" | {ICEBERG_LOCAL} / {HANDWRITTEN} |"
            + (f" {ICEBERG_S3} / {ICEBERG_LOCAL} |" if ICEBERG_S3 in results else "")
        )
        print("|---|" + "---|" * (len(names) + 1 + (ICEBERG_S3 in results)))
        tx = " | ".join(f"{results[n]['facts']['transactions']:,}" for n in names)
        print(f"| transactions | {tx} | |" + (" |" if ICEBERG_S3 in results else ""))
        for stage in STAGES:
            median = {n: statistics.median(results[n]["times"][stage]) for n in names}
            cells = " | ".join(f"{median[n]:.1f} s" for n in names)
            line = f"| {stage} | {cells} | {median[ICEBERG_LOCAL] / median[HANDWRITTEN]:.2f}x |"
            if ICEBERG_S3 in results:
                line += f" {median[ICEBERG_S3] / median[ICEBERG_LOCAL]:.2f}x |"
            print(line)
        print()
    for size, results in sides.items():
        for name, result in results.items():
            if "profile" in result:
                samples, waits = result["profile"]["cpu_samples"], result["profile"]["socket_wait_s"]
                total = sum(samples.values()) or 1
                areas = ", ".join(
                    f"{area} {count / total:.0%}" for area, count in sorted(samples.items(), key=lambda kv: -kv[1])
                )
                named = result.get("ports", {})
                other = "other sockets (Py4J, Spark's Python workers)"
                by_name: dict[str, float] = {}
                for port, seconds in waits.items():
                    by_name[named.get(port, other)] = by_name.get(named.get(port, other), 0.0) + seconds
                ports = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in by_name.items())
                print(f"* {name}, {size:,} customers: JVM CPU samples: {areas}; socket reads waited: {ports or 'none'}")
        print()
    sizes = sorted(sides)
    for a, b in itertools.pairwise(sizes):
        print(f"| growth {a:,} -> {b:,} | {HANDWRITTEN} | {ICEBERG_LOCAL} |\n|---|---|---|")
        for stage in STAGES:
            ratio = {
                n: statistics.median(sides[b][n]["times"][stage]) / statistics.median(sides[a][n]["times"][stage])
                for n in (HANDWRITTEN, ICEBERG_LOCAL)
            }
            print(f"| {stage} | {ratio[HANDWRITTEN]:.2f}x | {ratio[ICEBERG_LOCAL]:.2f}x |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--days", type=int, default=480)
    parser.add_argument("--compare-at", type=int, default=100_000, help="size for the scoring and push comparisons")
    parser.add_argument("--push-only", action="store_true", help="only the push comparisons, at --compare-at")
    parser.add_argument("--tables-against", metavar="REV", help="compare the tables with those of commit REV")
    parser.add_argument("--s3-at", type=int, help="with --tables-against: the size also run on the S3 store")
    parser.add_argument("--profile", action="store_true", help="with --tables-against: profile each side's JVM")
    args = parser.parse_args()
    if args.tables_against:
        tables_comparison(args)
        return
    if args.push_only:
        push_only(args)
        return
    ladder: dict[int, dict[str, float]] = {}
    facts: dict[int, dict[str, Any]] = {}
    comparisons: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            work = Path(tmp) / str(size)
            work.mkdir()
            settings = get_settings(home=work / "home")
            facts[size] = prepare(settings, size, args.days, work)
            repeats = args.repeats if size <= LADDER_REPEAT_LIMIT else 1
            times = ladder_stage_times(settings, work, repeats)
            ladder[size] = {stage: statistics.median(values) for stage, values in times.items()}
            facts[size]["driver_peak_rss_mb"] = driver_peak_rss_mb(settings)
            if size == args.compare_at:
                comparisons["scoring"] = scoring_comparison(settings, work, args.repeats)
                comparisons.update(push_comparisons(settings, work, args.repeats))
            print(f"done {size}: {facts[size]} {ladder[size]}", file=sys.stderr, flush=True)
            # The session's scratch space lives in this size's work dir: the next size starts its own.
            spark_session(settings, "bench").stop()
            shutil.rmtree(work, ignore_errors=True)
    report(args, ladder, facts, comparisons)


def growth(values: list[float]) -> str:
    return " | ".join(f"{b / a:.2f}x" for a, b in itertools.pairwise(values))


def report(
    args: argparse.Namespace,
    ladder: dict[int, dict[str, float]],
    facts: dict[int, dict[str, Any]],
    comparisons: dict[str, dict[str, float]],
) -> None:
    sizes = sorted(ladder)
    print(f"{args.days} days of history; median of {args.repeats} up to {LADDER_REPEAT_LIMIT:,} customers.\n")
    steps = " | ".join(f"growth {a:,} -> {b:,}" for a, b in itertools.pairwise(sizes))
    print(f"| stage | {' | '.join(f'{s:,} customers' for s in sizes)} | {steps} |")
    print("|---|" + "---|" * (2 * len(sizes) - 1))
    tx = [float(facts[s]["transactions"]) for s in sizes]
    print(f"| transactions | {' | '.join(f'{v:,.0f}' for v in tx)} | {growth(tx)} |")
    table = {"ingest": [facts[s]["ingest_s"] for s in sizes]}
    table.update({stage: [ladder[s][stage] for s in sizes] for stage in ladder[sizes[0]]})
    for stage, values in table.items():
        print(f"| {stage} | {' | '.join(f'{v:.1f} s' for v in values)} | {growth(values)} |")
    rss = [facts[s]["driver_peak_rss_mb"] for s in sizes]
    print(f"| batch-scoring driver peak RSS | {' | '.join(f'{v:.0f} MB' for v in rss)} | {growth(rss)} |")
    for name, results in comparisons.items():
        baseline = "mlflow.pyfunc.spark_udf" if name == "scoring" else "feast materialize"
        print(f"\n| {name} at {args.compare_at:,} customers | rows/s | ratio to {baseline} |\n|---|---|---|")
        for way, value in results.items():
            print(f"| {way} | {value:,.0f} | {value / results[baseline]:.2f} |")
        if name == "scoring":
            ours, floor = (results[w] for w in ("our job (mapInPandas, model once per worker)", FLOOR))
            print(f"\nOur job runs at {ours / floor:.2f}x the identity UDF's rows/s (the floor).")


if __name__ == "__main__":
    main()
