"""`propensity demo`: the whole loop on one machine, with the real libraries.

generate -> training -> batch scoring -> serve and query -> drifted new data -> two nights of batch
scoring and monitoring (four checks; the first night records drift, the second finds it held in 2 of
the last 3 checks and retrains: challenger vs champion; a winner is deployed to the running server,
which swaps it in) -> batch scoring again when a new champion was promoted (a rejected challenger
leaves the last night's scores standing) -> stop the server. The realised-accuracy plot is written
for the scores whose labels completed.
Every figure in the summary is measured by the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from rich.console import Console

from propensity.catalog import EMBEDDED_CATALOG, warehouse
from propensity.errors import PropensityError
from propensity.lake import TRANSACTIONS, ingest, resolve_date
from propensity.ports import free_port, stop_process
from propensity.progress import StepProgress
from propensity.settings import Settings
from propensity.spark import release_executors, run_spark, starts_run_server
from propensity.storage import Storage
from propensity.synthetic import COUNTRIES, DEFAULT_START, generate
from propensity.tables import load_table

DEMO_MARKER = ".propensity-demo"
SUMMARY_KEY = "reports/demo-summary.json"
STATE_DIRS = (
    "warehouse",
    "lake",
    "feature_store",
    "mlflow",
    "tables",
    "kfp",
    "state",
    "logs",
    "reports",
    "tmp",
    "demo-data",
)


@dataclass(frozen=True)
class DemoOptions:
    # The size `make demo` runs and the integration test runs (the same options): large enough for
    # every check to judge (the drift is unmistakable from 1,000 customers up), small enough to wait for.
    customers: int = 1500
    days: int = 480  # over a year of history: the active base is in its steady state
    new_days: int = 30
    drift: float = 0.8
    seed: int = 7
    known_requests: int = 120
    new_requests: int = 60
    # Logged requests (the inference log) at the wall clock's time; the back-dated nights' inference
    # checks look at their own dates, not at these.
    traffic_instances: int = 800
    rescore: bool = True  # score again after retraining, when a new champion was promoted


def prepare_home(settings: Settings) -> None:
    """Start from a clean work directory, but never wipe one the demo did not create."""
    home = settings.home
    if home.exists() and any(home.iterdir()) and not (home / DEMO_MARKER).exists():
        raise PropensityError(
            f"{home} holds state the demo did not create; set PROPENSITY_HOME to an empty folder for the demo"
        )
    # Tables the demo did not create (PROPENSITY_TABLES or PROPENSITY_CATALOG elsewhere) are never wiped.
    embedded = settings.catalog is None and settings.data_root == home
    if not embedded and load_table(settings, TRANSACTIONS) is not None:
        raise PropensityError(f"the demo starts from an empty lake, and {warehouse(settings)} holds one")
    for name in STATE_DIRS:
        shutil.rmtree(home / name, ignore_errors=True)
    (home / EMBEDDED_CATALOG).unlink(missing_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("created by `propensity demo`; the demo may wipe this folder\n")


def write_and_ingest(
    settings: Settings, customers: int, days: int, drift: float, seed: int, name: str, since_day: int = 0
) -> int:
    """Generate `days` days, write the days from `since_day` on (as a shop's daily export would) and
    ingest them: the lake appends those days. Returns the transactions ingested."""
    data = generate(customers=customers, days=days, drift=drift, seed=seed)
    # The shop's export, on the driver's disk (as a user's file is): Spark local or a cluster's
    # executors on this machine read it. Gone once ingested: the lake holds the data.
    folder = settings.scratch_dir / "demo-data" / name
    folder.mkdir(parents=True, exist_ok=True)
    since = DEFAULT_START + pd.Timedelta(days=since_day)
    data.customers.to_parquet(folder / "customers.parquet", index=False)
    data.transactions[data.transactions["timestamp"] >= since].to_parquet(folder / "transactions.parquet", index=False)
    try:
        return ingest(settings, folder / "transactions.parquet", folder / "customers.parquet").transactions
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        release_executors()  # the pipeline steps that follow are Spark applications of their own


def wait_until_ready(process: subprocess.Popen[Any], ready_url: str, log_path: Path, timeout: float) -> None:
    """Poll `ready_url` until it answers 200; fail with one line if the server exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise PropensityError(f"the server exited with code {process.returncode}; see {log_path}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise PropensityError(f"the server was not ready after {timeout:.0f}s; see {log_path}")
        time.sleep(0.5)


@contextmanager
def running_server(settings: Settings, port: int, timeout: float = 180.0) -> Iterator[str]:
    """Start `propensity serve` on loopback, wait until it is ready, stop it on exit."""
    log_path = settings.logs_dir / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.as_env()}
    with open(log_path, "a") as log:
        # Security lint (B603): this interpreter and this package's CLI, argv list, no shell.
        process = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", "propensity.cli", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, f"{url}/v2/health/ready", log_path, timeout)
        yield url
    finally:
        stop_process(process)


def query_server(url: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
    """One request per customer, as a website would send them; counts which path answered."""
    counts: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for instance in instances:
            response = client.post("/v1/models/propensity:predict", json={"instances": [instance]})
            counts["requests"] += 1
            if response.status_code != 200:
                counts["errors"] += 1
                continue
            prediction = response.json()["predictions"][0]
            counts[f"{prediction['source']}_hits"] += 1
            versions[f"{prediction['source']}:{prediction['model_version']}"] += 1
        bad = client.post("/v1/models/propensity:predict", json={"instances": [{"country": "DE"}]})
    return {
        "requests": counts["requests"],
        "batch_hits": counts["batch_hits"],
        "realtime_hits": counts["realtime_hits"],
        "errors": counts["errors"],
        "model_versions": dict(versions),
        "malformed_request_status": bad.status_code,
    }


def website_traffic(url: str, customers: list[str], per_request: int = 10) -> int:
    """Page views of known customers, several per request as a listing page sends them: the
    inference log then holds enough records for monitoring to judge their drift. Returns how many
    instances were answered."""
    answered = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for start in range(0, len(customers), per_request):
            batch = [{"customer_id": c} for c in customers[start : start + per_request]]
            response = client.post("/v1/models/propensity:predict", json={"instances": batch})
            if response.status_code == 200:
                answered += len(response.json()["predictions"])
    return answered


def demo_instances(settings: Settings, options: DemoOptions) -> list[dict[str, Any]]:
    from components.batch_scoring import sample_latest_customers

    known = sample_latest_customers(settings, options.known_requests, options.seed)
    instances: list[dict[str, Any]] = [{"customer_id": c} for c in known]
    for i in range(options.new_requests):
        instances.append(
            {
                "customer_id": f"new-{i:05d}",
                "country": COUNTRIES[i % len(COUNTRIES)],
                "channel": ("web", "app", "social")[i % 3],
            }
        )
    return instances


SCORING_FIGURES = ("rows_scored", "latest_rows", "model_version")


def rescore_needless(champion_version: str | None, last_scoring: dict[str, Any]) -> str | None:
    """Why scoring again after retraining would repeat the last night's work (the champion is the
    model that night scored with: the challenger was rejected or no retraining ran), or None when a
    new champion was promoted and its scores should replace the night's."""
    scored_with = str(last_scoring["model_version"])
    if champion_version is None or str(champion_version) != scored_with:
        return None
    return f"the champion v{scored_with} scored {last_scoring['score_date']} already: those scores stand"


def run_demo(
    settings: Settings,
    options: DemoOptions | None = None,
    progress: StepProgress | None = None,
) -> dict[str, Any]:
    options = options or DemoOptions()
    progress = progress or StepProgress(Console(quiet=True), live=False)
    started = time.monotonic()
    Storage(settings).check()
    prepare_home(settings)
    log_file = settings.logs_dir / "pipelines.log"
    timings: dict[str, float] = {}

    def step(name: str, message: str, func: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        with progress.step(message):
            result = func()
        timings[name] = round(time.monotonic() - t0, 1)
        return result

    with ExitStack() as spark:
        if starts_run_server(settings):
            # One Spark for the whole demo: every pipeline step and ingest connect to it.
            settings = step(
                "spark_start",
                "Starting a Spark Connect server on 127.0.0.1",
                lambda: spark.enter_context(run_spark(settings)),
            )
        return _loop(settings, options, progress, step, log_file, timings, started)


def _loop(
    settings: Settings,
    options: DemoOptions,
    progress: StepProgress,
    step: Callable[[str, str, Callable[[], Any]], Any],
    log_file: Path,
    timings: dict[str, float],
    started: float,
) -> dict[str, Any]:
    from components.batch_scoring import sample_latest_customers
    from components.deploy import read_deployments
    from monitoring.accuracy import read_accuracy_series, write_accuracy_plot
    from monitoring.outcomes import CHECKS, INFERENCE_DRIFT, PREDICTION_DRIFT, SCORING_DRIFT, read_outcomes
    from monitoring.trigger import read_history
    from pipelines.runner import run_local
    from propensity.tracking import CHAMPION, alias_version

    def pipeline(
        name: str, with_settings: Settings = settings, params: dict[str, Any] | None = None
    ) -> Callable[[], dict[str, Any]]:
        return lambda: run_local(name, params or {}, with_settings, log_file, on_task=progress.detail)

    tx = step(
        "generate",
        f"Generating {options.customers} customers over {options.days} days",
        lambda: write_and_ingest(settings, options.customers, options.days, 0.0, options.seed, "initial"),
    )
    training = step(
        "training",
        "Training pipeline: Feast -> Great Expectations -> candidates -> MLflow",
        pipeline("training"),
    )
    scoring = step(
        "batch_scoring",
        "Batch-scoring pipeline: Spark scores every known customer",
        pipeline("batch-scoring"),
    )
    first_score_date = str(resolve_date(settings, None).date())
    # The server follows the champion (checking every few seconds here); a retraining run's deploy
    # step finds it on this port, waits for it to swap the new champion in and smoke-tests it.
    # The inference log is published every few seconds here, so monitoring sees the demo's requests.
    served = settings.model_copy(
        update={"serving_port": free_port(), "serving_model_poll_seconds": 5.0, "inference_log_rotate_seconds": 5.0}
    )
    with ExitStack() as server:
        url = step(
            "server_start",
            "Starting the KServe model server on 127.0.0.1",
            lambda: server.enter_context(running_server(served, served.serving_port)),
        )
        serving = step(
            "serving",
            "Querying known and new customers",
            lambda: query_server(url, demo_instances(settings, options)),
        )
        serving["traffic_instances"] = step(
            "traffic",
            f"Website traffic: {options.traffic_instances} page views of known customers",
            lambda: website_traffic(url, sample_latest_customers(settings, options.traffic_instances, options.seed)),
        )
        new_tx = step(
            "new_data",
            f"{options.new_days} more days of data arrive, drifted by {options.drift}",
            lambda: write_and_ingest(
                settings,
                options.customers,
                options.days + options.new_days,
                options.drift,
                options.seed,
                "drifted",
                since_day=options.days,
            ),
        )
        history_before = len(read_history(settings))
        deployments_before = len(read_deployments(settings))
        # Two nights of the new period, each scored then monitored: a condition must hold in N of
        # the last M checks, so the first night only records it and the second may retrain.
        end = resolve_date(settings, None)
        nights = [str((end - pd.Timedelta(days=options.new_days // 2)).date()), str(end.date())]
        monitoring: dict[str, Any] = {}
        night_scoring: list[dict[str, Any]] = []
        for i, night in enumerate(nights, start=1):
            scored = step(
                f"batch_scoring_night_{i}",
                f"Night {i} ({night}): batch-scoring pipeline",
                pipeline("batch-scoring", params={"score_date": night}),
            )
            night_scoring.append({"score_date": night, **{k: scored[k] for k in SCORING_FIGURES}})
            monitoring = step(
                f"monitoring_night_{i}",
                f"Night {i} ({night}): monitoring pipeline (four checks, then the retraining decision)",
                pipeline("monitoring", served, params={"as_of_date": night}),
            )
        triggers = read_history(settings)[history_before:]
        deployments = read_deployments(settings)[deployments_before:]
        champion = alias_version(settings, settings.model_name, CHAMPION)
        rescore_skipped = rescore_needless(champion.version if champion else None, night_scoring[-1])
        rescoring = (
            step("batch_scoring_again", "Batch-scoring pipeline with the new champion", pipeline("batch-scoring"))
            if options.rescore and rescore_skipped is None
            else None
        )
    retrain = next((t for t in triggers if t.status not in ("skipped", "not_needed")), None)
    accuracy = read_accuracy_series(settings)
    summary = {
        "training": {
            "model_version": training["model_version"],
            "auc": round(float(training["auc"]), 4),
            "decision": training["decision"],
        },
        "batch_scoring": {
            "rows_scored": scoring["rows_scored"],
            "latest_rows": scoring["latest_rows"],
            "model_version": scoring["model_version"],
            "score_date": first_score_date,
        },
        "serving": serving,
        "monitoring": {
            "drift_detected": any(
                o.holds for c in (INFERENCE_DRIFT, SCORING_DRIFT, PREDICTION_DRIFT) for o in read_outcomes(settings, c)
            ),
            "retrain_triggered": retrain is not None,
            "trigger_status": retrain.status if retrain else (triggers[-1].status if triggers else "none"),
            "decisions": [{"as_of_date": t.as_of_date, "status": t.status, "reason": t.reason} for t in triggers],
            "checks": {
                c: {o.as_of_date: {"holds": o.holds, "reason": o.reason} for o in read_outcomes(settings, c)}
                for c in CHECKS
            },
            "pipeline_output": monitoring.get("Output"),
        },
        "realised_accuracy": {
            "points": len(accuracy),
            "auc_by_score_date": {
                p.score_date: round(p.auc, 4) for p in accuracy if p.segment == "all" and p.auc is not None
            },
            "plot": write_accuracy_plot(settings, accuracy) if accuracy else None,
        },
        "retraining": {
            "model_version": retrain.outputs.get("model_version") if retrain else None,
            "auc": round(float(retrain.outputs["auc"]), 4) if retrain and "auc" in retrain.outputs else None,
            "decision": retrain.outputs.get("decision") if retrain else None,
        },
        "batch_scoring_nights": night_scoring,
        "batch_scoring_after_retraining": {k: rescoring[k] for k in SCORING_FIGURES} if rescoring else None,
        "rescoring_skipped": rescore_skipped if options.rescore else "not asked for (--no-rescore)",
        "deployment": asdict(deployments[-1]) if deployments else None,
        "champion_version": champion.version if champion else None,
        "data": {"transactions_initial": tx, "transactions_after_new_data": new_tx},
        "timings_seconds": {**timings, "total": round(time.monotonic() - started, 1)},
        "logs": {"pipelines": str(log_file), "server": str(settings.logs_dir / "server.log")},
    }
    Storage(settings).write_json(SUMMARY_KEY, summary)
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    t, b, s, m, r = (summary[k] for k in ("training", "batch_scoring", "serving", "monitoring", "retraining"))
    lines = [
        f"Training        model v{t['model_version']}  AUC {t['auc']:.3f}  decision: {t['decision']}",
        f"Batch scoring   {b['rows_scored']} customers scored, latest table {b['latest_rows']} rows",
        f"Serving         {s['requests']} requests: {s['batch_hits']} batch, {s['realtime_hits']} real-time, "
        f"{s['errors']} errors; malformed request -> HTTP {s['malformed_request_status']}",
        f"Monitoring      drift detected: {m['drift_detected']}, retraining triggered: {m['retrain_triggered']}",
    ]
    for decision in m.get("decisions", []):
        lines.append(f"  {decision['as_of_date']}  {decision['status'].replace('_', ' ')}: {decision['reason']}")
    if a := summary.get("realised_accuracy"):
        aucs = ", ".join(f"{day} AUC {auc}" for day, auc in a["auc_by_score_date"].items()) or "no labels complete yet"
        lines.append(f"Realised        {aucs}" + (f"; plot: {a['plot']}" if a["plot"] else ""))
    if m["retrain_triggered"]:
        verdict = (
            f"v{r['model_version']} is the new champion"
            if str(summary["champion_version"]) == str(r["model_version"])
            else f"challenger v{r['model_version']} rejected, v{summary['champion_version']} stays champion"
        )
        retrained = f"model v{r['model_version']}  AUC {r['auc']}  decision: {r['decision']}"
        lines.append(f"Retraining      {retrained}: {verdict}")
    if after := summary.get("batch_scoring_after_retraining"):
        lines.append(f"Rescoring       v{after['model_version']}: {after['rows_scored']} customers scored again")
    elif skipped := summary.get("rescoring_skipped"):
        lines.append(f"Rescoring       skipped: {skipped}")
    if d := summary.get("deployment"):
        lines.append(f"Deployment      v{d['batch_version']} {d['outcome'].replace('_', ' ')}: {d['detail']}")
    lines.append(f"Champion        v{summary['champion_version']}  (total {summary['timings_seconds']['total']}s)")
    return lines
