"""propensity: batch-and-online purchase propensity on Kubeflow (Feast, MLflow, Spark, KServe).

Generate or ingest data, run the training, batch-scoring and monitoring pipelines locally or on
Kubeflow Pipelines, serve scores, or run the whole loop with `propensity demo`. Every command ends
with a short summary (`--json` for a machine-readable one). See the README for the walkthrough.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from propensity.errors import PropensityError
from propensity.progress import StepProgress
from propensity.settings import get_settings

PIPELINES = ("training", "batch-scoring", "monitoring")
console = Console(stderr=True)


def _emit(args: argparse.Namespace, summary: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)


def _progress() -> StepProgress:
    """Progress bound to this moment's stderr: pipeline steps redirect sys.stderr to their log while
    they run, and the progress lines must still reach the user."""
    return StepProgress(Console(file=sys.stderr))


def _with_progress(message: str, func: Callable[[], Any]) -> Any:
    with _progress().step(message):
        return func()


def cmd_generate(args: argparse.Namespace) -> None:
    from propensity.synthetic import generate

    data = _with_progress(
        "Generating synthetic data", lambda: generate(args.customers, args.days, args.drift, args.seed)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data.customers.to_parquet(out / "customers.parquet", index=False)
    data.transactions.to_parquet(out / "transactions.parquet", index=False)
    summary: dict[str, Any] = {
        "out": str(out),
        "customers": len(data.customers),
        "transactions": len(data.transactions),
        "first": str(data.transactions["timestamp"].min()),
        "last": str(data.transactions["timestamp"].max()),
    }
    _emit(
        args,
        summary,
        [
            f"Wrote {summary['customers']} customers and {summary['transactions']} transactions "
            f"({summary['first'][:10]} to {summary['last'][:10]}) to {out}",
            f"Next: propensity ingest --transactions {out / 'transactions.parquet'} "
            f"--customers {out / 'customers.parquet'}",
        ],
    )


def cmd_ingest(args: argparse.Namespace) -> None:
    from propensity.lake import ingest

    settings = get_settings()
    result = _with_progress(
        "Validating and ingesting (Spark)",
        lambda: ingest(settings, Path(args.transactions), Path(args.customers) if args.customers else None),
    )
    from propensity.catalog import warehouse

    summary = {**asdict(result), "lake": warehouse(settings)}
    _emit(
        args,
        summary,
        [
            f"Ingested {result.transactions} transactions over {result.days} day(s) "
            f"({result.first_day} to {result.last_day}) into the lake in {summary['lake']}; "
            f"{result.customers_total} customers ({result.customers_changed} new or changed)"
        ],
    )


def cmd_training_set(args: argparse.Namespace) -> None:
    from components.features import rebuild_training_set
    from components.training import training_set_of_run

    settings = get_settings()
    recorded = training_set_of_run(settings, args.run)
    info = _with_progress(
        "Rebuilding the training set from its table snapshots (Spark, Feast)",
        lambda: rebuild_training_set(settings, recorded, Path(args.out)),
    )
    _emit(
        args,
        {**info.as_dict(), "out": args.out},
        [
            f"Rebuilt the training set of MLflow run {args.run} (as of {info.as_of_date}, {info.rows} rows) "
            f"from the table snapshots it read into {args.out}"
        ],
    )


def cmd_run(args: argparse.Namespace) -> None:
    from pipelines.runner import parse_params, run_local

    settings = get_settings()
    log_file = settings.logs_dir / f"{args.pipeline}-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    params = parse_params(args.param)
    progress = _progress()
    try:
        with progress.step(f"Running the {args.pipeline} pipeline locally (log: {log_file})"):
            outputs = run_local(args.pipeline, params, settings, log_file, on_task=progress.detail)
    except RuntimeError:  # kfp.local reports a failed step this way; the cause is in the step's log
        raise PropensityError(
            f"the {args.pipeline} pipeline failed: {step_error(log_file)}; full log: {log_file}"
        ) from None
    summary = {"pipeline": args.pipeline, "outputs": outputs, "log": str(log_file)}
    _emit(
        args,
        summary,
        [
            f"Pipeline {args.pipeline} succeeded: " + ", ".join(f"{k}={v}" for k, v in sorted(outputs.items())),
            f"Log: {log_file}",
        ],
    )


def step_error(log_file: Path) -> str:
    """The last exception a failed step printed, e.g. 'PropensityError: model ... has no champion'."""
    pattern = re.compile(r"\b(\w+(?:Error|Exception)): (.+)$")
    found = "a step failed"
    if log_file.exists():
        for line in log_file.read_text(errors="replace").splitlines():
            match = pattern.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
            if match and not match.group(1).endswith("Warning"):
                found = f"{match.group(1)}: {match.group(2).strip()}"
    return found


def cmd_compile(args: argparse.Namespace) -> None:
    from pipelines.runner import compile_all

    settings = get_settings()
    paths = compile_all(Path(args.out), args.image or settings.image, settings.kfp_pipeline_root)
    _emit(
        args,
        {"files": [str(p) for p in paths], "image": args.image or settings.image},
        [f"Compiled {p}" for p in paths],
    )


def cmd_submit(args: argparse.Namespace) -> None:
    from pipelines.runner import parse_params, submit

    settings = get_settings()
    run_id = submit(args.pipeline, parse_params(args.param), settings, args.host, args.experiment)
    _emit(args, {"run_id": run_id, "pipeline": args.pipeline}, [f"Submitted {args.pipeline}: run {run_id}"])


def cmd_runs(args: argparse.Namespace) -> None:
    from pipelines.runner import list_runs

    runs = list_runs(args.pipeline, get_settings(), args.host, args.experiment, args.limit)
    _emit(
        args,
        {"pipeline": args.pipeline, "runs": runs},
        [f"{r['created_at']}  {r['state']:<10}  {r['run_id']}" for r in runs] or ["no runs"],
    )


def cmd_schedule(args: argparse.Namespace) -> None:
    from pipelines.runner import parse_params, schedule

    settings = get_settings()
    action, job_id = schedule(args.pipeline, args.cron, settings, args.host, args.experiment, parse_params(args.param))
    _emit(
        args,
        {"action": action, "recurring_run_id": job_id},
        [f"Recurring run for {args.pipeline} {action} ({job_id}), cron '{args.cron}'"],
    )


def cmd_serve(args: argparse.Namespace) -> None:
    from serving.server import serve

    serve(get_settings(), args.port, args.workers)


def cmd_deploy(args: argparse.Namespace) -> None:
    from components.deploy import deploy, rollback

    settings = get_settings()
    if args.command == "deploy":
        event = _with_progress(
            f"Deploying v{args.version} to {settings.deploy_target}", lambda: deploy(settings, args.version)
        )
        line = f"Deployed v{event.batch_version} (real-time model v{event.realtime_version}): {event.detail}"
    else:
        event = _with_progress(f"Rolling back on {settings.deploy_target}", lambda: rollback(settings))
        line = f"Rolled back v{event.batch_version}: {event.detail}"
    _emit(args, asdict(event), [line])


def cmd_executor(args: argparse.Namespace) -> None:
    from propensity.spark import executor_command

    command = executor_command(dict(os.environ))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the executor's Python workers
    # Security lint (B606): Spark's executor command, built from settings, argv list.
    os.execvp(command[0], command)  # nosec B606


def cmd_demo(args: argparse.Namespace) -> None:
    from propensity.demo import SUMMARY_KEY, DemoOptions, run_demo, summary_lines
    from propensity.storage import Storage

    settings = get_settings()
    given = {"customers": args.customers, "days": args.days, "drift": args.drift}
    options = DemoOptions(**{k: v for k, v in given.items() if v is not None}, rescore=not args.no_rescore)
    summary = run_demo(settings, options, _progress())
    _emit(args, summary, [*summary_lines(summary), f"Summary: {Storage(settings).uri(SUMMARY_KEY)}"])


def _version(text: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*", text):
        raise argparse.ArgumentTypeError(f"a model version is a positive whole number, not {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="propensity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
        p.set_defaults(func=func)
        return p

    p = add("generate", cmd_generate, "write a deterministic synthetic data set")
    p.add_argument("--out", required=True)
    p.add_argument("--customers", type=int, default=5000, help="customers at the start (more arrive daily)")
    p.add_argument("--days", type=int, default=180)
    p.add_argument("--drift", type=float, default=0.0, help="0..1: how much the last 30 days change")
    p.add_argument("--seed", type=int, default=7)

    p = add("ingest", cmd_ingest, "validate and load your own transactions (CSV or Parquet)")
    p.add_argument("--transactions", required=True)
    p.add_argument("--customers")

    p = add("training-set", cmd_training_set, "build again the training set an MLflow run trained on (time travel)")
    p.add_argument("--run", required=True, help="the MLflow run id of a trained candidate")
    p.add_argument("--out", required=True, help="the Parquet file to write")

    for name, func, help_text in (
        ("run", cmd_run, "run a pipeline locally (kfp.local)"),
        ("submit", cmd_submit, "submit a pipeline run to Kubeflow Pipelines"),
    ):
        p = add(name, func, help_text)
        p.add_argument("pipeline", choices=PIPELINES)
        p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
        if name == "submit":
            p.add_argument("--host", help="KFP API URL (default: PROPENSITY_KFP_HOST)")
            p.add_argument("--experiment", default="propensity")

    p = add("runs", cmd_runs, "list the newest runs of a pipeline on Kubeflow Pipelines")
    p.add_argument("pipeline", choices=PIPELINES)
    p.add_argument("--host", help="KFP API URL (default: PROPENSITY_KFP_HOST)")
    p.add_argument("--experiment", default="propensity")
    p.add_argument("--limit", type=int, default=20)

    p = add("schedule", cmd_schedule, "create or update a recurring run (idempotent)")
    p.add_argument("pipeline", choices=PIPELINES)
    p.add_argument("--host", help="KFP API URL (default: PROPENSITY_KFP_HOST)")
    p.add_argument("--cron", required=True)
    p.add_argument("--experiment", default="propensity")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")

    p = add("compile", cmd_compile, "write one KFP IR YAML per pipeline")
    p.add_argument("--out", default="compiled")
    p.add_argument("--image", help="project image for every step (default: PROPENSITY_IMAGE)")

    p = add(
        "serve",
        cmd_serve,
        "start the KServe model server; other KServe model-server options (--max_threads, ...) are passed on",
    )
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="server processes (default: PROPENSITY_SERVING_WORKERS)")

    p = add(
        "deploy",
        cmd_deploy,
        "make a registered version champion and roll it out (canary, smoke requests, automatic rollback)",
    )
    p.add_argument("--version", required=True, type=_version, help="version of the batch model (PROPENSITY_MODEL_NAME)")
    add("rollback", cmd_deploy, "go back to the release deployed before the current one")

    add("executor", cmd_executor, "run as a Spark executor (the argument Spark on Kubernetes starts its pods with)")

    # Defaults are the demo's own (propensity.demo.DemoOptions, which the integration test runs).
    p = add("demo", cmd_demo, "run the whole loop locally")
    p.add_argument("--customers", type=int, help="customers at the start (default: the demo's)")
    p.add_argument("--days", type=int, help="days of history before the new data (default: the demo's)")
    p.add_argument("--drift", type=float, help="0..1: how much the new data changes (default: the demo's)")
    p.add_argument(
        "--no-rescore",
        action="store_true",
        help="never score again after retraining (by default only a newly promoted champion rescores)",
    )
    return parser


def quiet_libraries() -> None:
    """Library deprecation chatter and download progress bars hide the progress a user needs to see."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # `serve` passes the KServe model server's own options (--workers, --max_threads, ...) to
    # KServe's argument parser; every other command takes only its own.
    if unknown and getattr(args, "func", None) is not cmd_serve:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    quiet_libraries()
    try:
        args.func(args)
    except (PropensityError, ValueError, FileNotFoundError) as exc:
        return error_line(str(exc))
    except Exception as exc:
        # MLflow's errors (its server unreachable, a model missing) say what failed in one line.
        # Only a command that imported MLflow can raise one: no import here just to catch it.
        mlflow_errors = sys.modules.get("mlflow.exceptions")
        if mlflow_errors is None or not isinstance(exc, mlflow_errors.MlflowException):
            raise
        return error_line(f"MLflow: {exc.message}")
    return 0


def error_line(message: str) -> int:
    # The message may quote the user's data (`[/]` in a value): never read it as Rich markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
