"""Run pipelines locally (kfp.local), compile them to IR YAML, submit and schedule them on KFP."""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml

from propensity.errors import PropensityError
from propensity.settings import Settings


def pipelines() -> dict[str, Callable[..., Any]]:
    from pipelines.batch_scoring import batch_scoring_pipeline
    from pipelines.monitoring import monitoring_pipeline
    from pipelines.training import training_pipeline

    return {
        "training": training_pipeline,
        "batch-scoring": batch_scoring_pipeline,
        "monitoring": monitoring_pipeline,
    }


def pipeline_function(name: str) -> Callable[..., Any]:
    known = pipelines()
    if name not in known:
        raise PropensityError(f"unknown pipeline '{name}'; choose one of {', '.join(known)}")
    return known[name]


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs from the command line; values are parsed as YAML (numbers, lists) when they can be."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PropensityError(f"parameter '{pair}' is not of the form key=value")
        try:
            params[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            params[key] = value
        if isinstance(params[key], (bool, int, float, list, dict)) or params[key] is None:
            continue
        params[key] = str(params[key])
    return params


def _check_params(func: Callable[..., Any], params: dict[str, Any]) -> None:
    accepted = set(func.component_spec.inputs or {})  # type: ignore[attr-defined]
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise PropensityError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}")


class _TaskWatcher(io.TextIOBase):
    """Writes kfp.local's output through to the log and reports each task as kfp.local starts it."""

    STARTED = re.compile(r"Executing task '([^']+)'")
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, sink: TextIO, on_task: Callable[[str], Any] | None) -> None:
        self._sink, self._on_task = sink, on_task

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._sink.write(text)
        if self._on_task is not None and "Executing task" in text:
            for match in self.STARTED.finditer(self.ANSI.sub("", text)):
                self._on_task(match.group(1))
        return len(text)

    def flush(self) -> None:
        self._sink.flush()


@contextlib.contextmanager
def _quiet_kfp_logs(log_file: Path | None, on_task: Callable[[str], Any] | None = None) -> Iterator[None]:
    """kfp.local streams every step's output; send it to a log file when one is given, and tell
    `on_task` the name of each task as it starts."""
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        handle = _TaskWatcher(log, on_task)
        with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            handler = logging.StreamHandler(handle)
            loggers = [logging.getLogger(), logging.getLogger("kfp")]
            saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
            for lg in loggers:
                lg.handlers = [handler]
            try:
                yield
            finally:
                for lg, handlers, propagate in saved:
                    lg.handlers, lg.propagate = handlers, propagate


@contextlib.contextmanager
def _settings_in_environment(settings: Settings) -> Iterator[None]:
    """Pipeline steps are subprocesses that read settings from the environment: export ours while
    the pipeline runs, then put the environment back as it was."""
    exported = settings.as_env()
    saved = {key: os.environ.get(key) for key in exported}
    os.environ.update(exported)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_local(
    name: str,
    params: dict[str, Any],
    settings: Settings,
    log_file: Path | None = None,
    on_task: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Run a pipeline with kfp.local's SubprocessRunner in this environment; return its outputs.

    With a log file, the steps' output goes there and `on_task` hears each task's name as it starts.
    """
    from kfp import local

    func = pipeline_function(name)
    _check_params(func, params)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(settings.pipeline_root),
        raise_on_error=True,
    )
    original_print = builtins.print
    try:
        with _settings_in_environment(settings), _quiet_kfp_logs(log_file, on_task):
            task = func(**params)
    finally:
        # kfp.local indents print() while a step runs by swapping builtins.print; with parallel steps
        # (ParallelFor) its save/restore pairs interleave and the indentation can stick. Undo that.
        builtins.print = original_print
    return dict(task.outputs)


def set_image(spec: dict[str, Any], image: str) -> dict[str, Any]:
    """Point every executor of a compiled pipeline at the project image."""
    for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
        if "container" in executor:
            executor["container"]["image"] = image
    return spec


def compile_pipeline(name: str, path: Path, image: str) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(pipeline_function(name), str(path))
    # Two documents: the pipeline spec, then the platform spec (Kubernetes settings of each step).
    spec, *platform = yaml.safe_load_all(path.read_text())
    path.write_text(yaml.safe_dump_all([set_image(spec, image), *platform], sort_keys=False))
    return path


def read_compiled(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A compiled pipeline's (pipeline spec, platform spec); the latter is empty without one."""
    spec, *platform = yaml.safe_load_all(path.read_text())
    return spec, (platform[0] if platform else {})


def compile_all(out_dir: Path, image: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [compile_pipeline(name, out_dir / f"{name}.yaml", image) for name in pipelines()]


class KfpClient(Protocol):
    """The part of `kfp.Client` this project uses (a protocol, so tests can pass a fake)."""

    def create_run_from_pipeline_package(
        self,
        pipeline_file: str,
        arguments: dict[str, Any],
        run_name: str | None = ...,
        experiment_name: str | None = ...,
        **kwargs: Any,
    ) -> Any: ...

    def create_experiment(self, name: str, **kwargs: Any) -> Any: ...

    def list_recurring_runs(self, **kwargs: Any) -> Any: ...

    def create_recurring_run(self, experiment_id: str, job_name: str, **kwargs: Any) -> Any: ...

    def delete_recurring_run(self, recurring_run_id: str) -> Any: ...


def kfp_client(host: str) -> KfpClient:
    import kfp

    return kfp.Client(host=host)


def submit(
    name: str,
    host: str,
    params: dict[str, Any],
    settings: Settings,
    experiment: str = "propensity",
    client: KfpClient | None = None,
) -> str:
    """Compile with the configured image and create a run; returns the run id."""
    _check_params(pipeline_function(name), params)
    client = client or kfp_client(host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", settings.image)
        run = client.create_run_from_pipeline_package(
            str(package),
            arguments=params,
            run_name=f"propensity-{name}",
            experiment_name=experiment,
            service_account=settings.kfp_service_account,
        )
    return str(run.run_id)


def schedule(
    name: str,
    host: str,
    cron: str,
    settings: Settings,
    experiment: str = "propensity",
    params: dict[str, Any] | None = None,
    client: KfpClient | None = None,
) -> tuple[str, str]:
    """Create the recurring run `propensity-<name>`, replacing one with a different spec; idempotent.

    Returns (action, recurring_run_id) with action "created", "unchanged" or "replaced".
    """
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise PropensityError(f"cron expression '{cron}' must have 5 or 6 fields, e.g. '0 2 * * *'")
    cron6 = cron if len(fields) == 6 else f"0 {cron}"  # KFP wants seconds first
    params = params or {}
    _check_params(pipeline_function(name), params)
    client = client or kfp_client(host)
    job_name = f"propensity-{name}"
    experiment_id = client.create_experiment(experiment).experiment_id  # returns the existing one if present
    existing = [
        r
        for r in (client.list_recurring_runs(experiment_id=experiment_id, page_size=200).recurring_runs or [])
        if r.display_name == job_name
    ]
    for run in existing:
        cron_now = run.trigger.cron_schedule.cron if run.trigger and run.trigger.cron_schedule else None
        same_account = getattr(run, "service_account", None) == settings.kfp_service_account
        if cron_now == cron6 and (run.runtime_config.parameters or {}) == params and same_account:
            return "unchanged", str(run.recurring_run_id)
    for run in existing:
        client.delete_recurring_run(run.recurring_run_id)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", settings.image)
        created = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=cron6,
            pipeline_package_path=str(package),
            params=params,
            max_concurrency=1,
            no_catchup=True,
            enabled=True,
            service_account=settings.kfp_service_account,
        )
    return ("replaced" if existing else "created"), str(created.recurring_run_id)
