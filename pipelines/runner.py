"""Run pipelines locally (kfp.local), compile them to IR YAML, submit and schedule them on KFP."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import yaml

from propensity.errors import PropensityError, shown
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
            raise PropensityError(f"parameter {shown(pair)} is not of the form key=value")
        try:
            params[key] = yaml.safe_load(value) if value else ""
        except (yaml.YAMLError, ValueError):  # ValueError: a date YAML reads but Python cannot hold (year 0)
            params[key] = value
        if isinstance(params[key], (bool, int, float, list, dict)) or params[key] is None:
            continue
        params[key] = str(params[key])
    return params


# What a value of each KFP parameter type may be (bool is an int in Python: excluded by hand).
_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "String": (str,),
    "Integer": (int,),
    "Float": (int, float),
    "Boolean": (bool,),
    "List": (list,),
    "Struct": (dict,),
}


def _check_params(func: Callable[..., Any], params: dict[str, Any]) -> None:
    """Each parameter is one the pipeline takes, of its declared type and range, before anything runs
    or is submitted: a bad value would otherwise fail a step minutes later (or on the cluster)."""
    inputs = func.component_spec.inputs or {}  # type: ignore[attr-defined]
    unknown = sorted(set(params) - set(inputs))
    if unknown:
        named = ", ".join(shown(name) for name in unknown[:5])
        raise PropensityError(f"unknown parameter(s) {named}; accepted: {', '.join(sorted(inputs))}")
    for name, value in params.items():
        kind = inputs[name].type
        allowed = _PARAMETER_TYPES.get(kind, (object,))
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise PropensityError(f"parameter {name} must be of type {kind}, got {shown(value)}")
        if name.endswith("_date") and value:
            try:
                pd.Timestamp(value)
            except (ValueError, OverflowError):
                raise PropensityError(f"parameter {name}: {shown(value)} is not a date; use YYYY-MM-DD") from None
        if kind == "Integer" and isinstance(value, int) and value < 0:
            raise PropensityError(f"parameter {name} must be 0 (the setting's value) or more, got {value}")
        if name == "candidates" and not (isinstance(value, list) and value and all(isinstance(c, dict) for c in value)):
            raise PropensityError(f"parameter candidates must be a non-empty list of mappings, got {shown(value)}")


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


@contextlib.contextmanager
def _without_retries(func: Any) -> Iterator[None]:
    """kfp.local honours the steps' retry policies (minutes of backoff, meant for the cluster); a
    local run should fail in front of its user at once. Cleared for this run only."""
    spec = func.component_spec.implementation.graph
    saved = type(spec)()
    saved.CopyFrom(spec)
    dags = [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]
    for dag in dags:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")
    try:
        yield
    finally:
        spec.CopyFrom(saved)


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
        pipeline_root=str(settings.local_pipeline_root),
        raise_on_error=True,
    )
    original_print = builtins.print
    try:
        from propensity.spark import run_spark

        # One Spark for the run: the steps connect to it instead of each starting a JVM.
        with run_spark(settings) as run_settings:
            return _run(func, params, run_settings, log_file, on_task)
    finally:
        # kfp.local indents print() while a step runs by swapping builtins.print; with parallel steps
        # (ParallelFor) its save/restore pairs interleave and the indentation can stick. Undo that.
        builtins.print = original_print


def _run(
    func: Callable[..., Any],
    params: dict[str, Any],
    settings: Settings,
    log_file: Path | None,
    on_task: Callable[[str], Any] | None,
) -> dict[str, Any]:
    with (
        _settings_in_environment(settings),
        _quiet_kfp_logs(log_file, on_task),
        warnings.catch_warnings(),
        _without_retries(func),
    ):
        # The cluster-only settings of each step (resources, display names; see platform.py)
        # mean nothing to kfp.local, which says so for every task.
        warnings.filterwarnings("ignore", r"Task .*: settings \[.*\] have no effect in the current local runner")
        task = func(**params)
    return dict(task.outputs)


def set_image(spec: dict[str, Any], image: str) -> dict[str, Any]:
    """Point every executor of a compiled pipeline at the project image."""
    for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
        if "container" in executor:
            executor["container"]["image"] = image
    return spec


def compile_pipeline(name: str, path: Path, image: str, pipeline_root: str | None = None) -> Path:
    """Compile to `path`; with `pipeline_root` (e.g. s3://bucket/kfp) step artifacts go there
    instead of KFP's default artifact store."""
    from kfp import compiler

    compiler.Compiler().compile(pipeline_function(name), str(path))
    # Two documents: the pipeline spec, then the platform spec (Kubernetes settings of each step).
    spec, *platform = yaml.safe_load_all(path.read_text())
    spec = set_image(spec, image)
    if pipeline_root:
        spec["defaultPipelineRoot"] = pipeline_root
    path.write_text(yaml.safe_dump_all([spec, *platform], sort_keys=False))
    return path


def read_compiled(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A compiled pipeline's (pipeline spec, platform spec); the latter is empty without one."""
    spec, *platform = yaml.safe_load_all(path.read_text())
    return spec, (platform[0] if platform else {})


def compile_all(out_dir: Path, image: str, pipeline_root: str | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [compile_pipeline(name, out_dir / f"{name}.yaml", image, pipeline_root) for name in pipelines()]


IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubeflow/pipelines/token")  # KFP's projected ServiceAccount token


def kfp_client(settings: Settings, host: str | None = None) -> Any:
    """A `kfp.Client` for the host (default `PROPENSITY_KFP_HOST`), authenticated by, in order: a
    bearer token (`PROPENSITY_KFP_TOKEN`), a session cookie (`PROPENSITY_KFP_COOKIES`, e.g.
    `authservice_session=...` behind Dex/oauth2-proxy), or, inside a pod, the projected
    ServiceAccount token that KFP mounts (`KF_PIPELINES_SA_TOKEN_PATH`)."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    host = host or settings.kfp_host
    if not host:
        raise PropensityError("no Kubeflow Pipelines host: pass --host or set PROPENSITY_KFP_HOST")
    auth: dict[str, Any] = {}
    headers: dict[str, str] = {}
    token_file = Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", IN_CLUSTER_TOKEN))
    if settings.kfp_token is not None:
        auth["existing_token"] = settings.kfp_token.get_secret_value()
        headers["Authorization"] = f"Bearer {auth['existing_token']}"
    elif settings.kfp_cookies is not None:
        auth["cookies"] = headers["Cookie"] = settings.kfp_cookies.get_secret_value()
    elif token_file.is_file():
        auth["credentials"] = ServiceAccountTokenVolumeCredentials(path=str(token_file))
        headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
    _check_reachable(host, headers)
    with kfp_errors(host), warnings.catch_warnings():
        # Every kfp.Client says it needs KFP 2.0.0-beta.2 or later; the project pins a 2.x client.
        warnings.filterwarnings("ignore", "This client only works with Kubeflow Pipeline", FutureWarning)
        return kfp.Client(host=host, namespace=settings.kfp_namespace or "kubeflow", **auth)


def _check_reachable(host: str, headers: dict[str, str]) -> None:
    """Fail fast and in one line: kfp.Client retries its health check for half a minute, then
    reports a timeout that hides a refused login or a wrong URL."""
    import httpx

    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as error:
        raise PropensityError(f"cannot reach Kubeflow Pipelines at {host}: {error}") from error
    if response.status_code >= 300:
        detail = response.text.strip().replace("\n", " ")[:300]
        raise PropensityError(f"Kubeflow Pipelines at {host} answered HTTP {response.status_code}: {detail}")


@contextlib.contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """One line naming the KFP host for what went wrong talking to it, instead of a traceback; the
    client's own prints go to stderr."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        # kfp.Client prints links to the UI; keep stdout for our own (possibly JSON) output.
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except ApiException as error:
        detail = (error.body or error.reason or "").strip().replace("\n", " ")[:300]
        raise PropensityError(f"Kubeflow Pipelines at {host} answered HTTP {error.status}: {detail}") from error
    except (HTTPError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise PropensityError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from error


def _experiment_id(client: Any, settings: Settings, experiment: str) -> str:
    # Returns the existing experiment of that name (in the namespace) if there is one.
    return str(client.create_experiment(experiment, namespace=settings.kfp_namespace).experiment_id)


def submit(
    name: str,
    params: dict[str, Any],
    settings: Settings,
    host: str | None = None,
    experiment: str = "propensity",
) -> str:
    """Compile with the configured image and create a run as the pipeline ServiceAccount; returns its id."""
    _check_params(pipeline_function(name), params)
    client = kfp_client(settings, host)
    with tempfile.TemporaryDirectory() as tmp, kfp_errors(host or str(settings.kfp_host)):
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", settings.image, settings.kfp_pipeline_root)
        run = client.create_run_from_pipeline_package(
            str(package),
            arguments=params,
            run_name=f"propensity-{name}",
            experiment_id=_experiment_id(client, settings, experiment),
            namespace=settings.kfp_namespace,
            service_account=settings.kfp_service_account,
        )
    return str(run.run_id)


# KFP run states in which a run may still do work (a new run of the same pipeline would race it).
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "PAUSED", "CANCELING", "RUNTIME_STATE_UNSPECIFIED"})


def list_runs(
    name: str, settings: Settings, host: str | None = None, experiment: str = "propensity", limit: int = 20
) -> list[dict[str, Any]]:
    """The newest runs of `propensity-<name>` in the experiment, newest first: id, state, whether it
    is still active, created_at."""
    pipeline_function(name)
    client = kfp_client(settings, host)
    same_name = {"key": "display_name", "operation": "EQUALS", "string_value": f"propensity-{name}"}
    with kfp_errors(host or str(settings.kfp_host)):
        page = client.list_runs(
            experiment_id=_experiment_id(client, settings, experiment),
            namespace=settings.kfp_namespace,
            page_size=limit,
            sort_by="created_at desc",
            filter=json.dumps({"predicates": [same_name]}),
        )
    return [
        {
            "run_id": str(run.run_id),
            "state": str(run.state),
            "active": run.state in ACTIVE_STATES,
            "created_at": run.created_at.isoformat(),
        }
        for run in (page.runs or [])
    ]


def _recurring_runs(client: Any, experiment_id: str, settings: Settings) -> list[Any]:
    runs: list[Any] = []
    # Security lint (B105): an empty page token of the KFP list API.
    token = ""  # nosec B105
    while True:
        page = client.list_recurring_runs(
            experiment_id=experiment_id, page_size=100, page_token=token, namespace=settings.kfp_namespace
        )
        runs += page.recurring_runs or []
        token = page.next_page_token or ""
        if not token:
            return runs


def schedule_fingerprint(package: Path, cron: str, params: dict[str, Any], service_account: str) -> str:
    """What a recurring run is made of: the compiled pipeline (steps, image, platform settings),
    its cron, parameters and ServiceAccount. Any change means the recurring run must be replaced."""
    content = json.dumps(
        {"package": package.read_text(), "cron": cron, "params": params, "service_account": service_account},
        sort_keys=True,
    )
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def schedule(
    name: str,
    cron: str,
    settings: Settings,
    host: str | None = None,
    experiment: str = "propensity",
    params: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Create the recurring run `propensity-<name>`, or replace it when anything it is made of changed
    (compiled pipeline, image, cron, parameters, ServiceAccount); never two of them.

    Returns (action, recurring_run_id) with action "created", "unchanged" or "replaced".
    """
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise PropensityError(f"cron expression '{cron}' must have 5 or 6 fields, e.g. '0 2 * * *'")
    cron6 = cron if len(fields) == 6 else f"0 {cron}"  # KFP wants seconds first
    params = params or {}
    _check_params(pipeline_function(name), params)
    client = kfp_client(settings, host)
    job_name = f"propensity-{name}"
    with tempfile.TemporaryDirectory() as tmp, kfp_errors(host or str(settings.kfp_host)):
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", settings.image, settings.kfp_pipeline_root)
        description = f"spec {schedule_fingerprint(package, cron6, params, settings.kfp_service_account)}"
        experiment_id = _experiment_id(client, settings, experiment)
        existing = [r for r in _recurring_runs(client, experiment_id, settings) if r.display_name == job_name]
        if len(existing) == 1 and existing[0].description == description:
            return "unchanged", str(existing[0].recurring_run_id)
        for run in existing:
            client.delete_recurring_run(run.recurring_run_id)
        created = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            description=description,
            cron_expression=cron6,
            pipeline_package_path=str(package),
            params=params,
            max_concurrency=1,
            no_catchup=True,
            enabled=True,
            service_account=settings.kfp_service_account,
        )
    return ("replaced" if existing else "created"), str(created.recurring_run_id)
