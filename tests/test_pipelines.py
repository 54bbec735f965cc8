"""Compiled IR YAML (what the KFP backend consumes) and the small code that talks to KFP."""

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from pipelines.platform import CONFIG_MAP, SECRET, WORK_DIR
from pipelines.runner import compile_all, parse_params, read_compiled, schedule, submit
from propensity.errors import PropensityError
from propensity.settings import Settings
from tests.kfp_api import KfpApi, kfp_api_server
from tests.test_ingest import error_line

IMAGE = "registry.example.com/ml/propensity:1.2.3"
MANIFESTS = Path(__file__).parent.parent / "manifests" / "base"


@pytest.fixture(scope="module")
def compiled_both(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    out = tmp_path_factory.mktemp("compiled")
    return {p.stem: read_compiled(p) for p in compile_all(out, IMAGE)}


@pytest.fixture(scope="module")
def compiled(compiled_both: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, (spec, _) in compiled_both.items()}


def tasks_by_component(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of a pipeline (conditions included), by the component it runs."""
    found: dict[str, dict[str, Any]] = {}
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    for dag in dags:
        for task in dag["tasks"].values():
            name = task["componentRef"]["name"].removeprefix("comp-")
            if not any(name == c.removeprefix("comp-") and "dag" in spec["components"][c] for c in spec["components"]):
                found[name] = task
    return found


def test_every_step_gets_the_settings_credentials_and_a_work_dir(
    compiled_both: dict[str, tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    config_map = yaml.safe_load((MANIFESTS / "configmap.yaml").read_text())
    predictor = yaml.safe_load((MANIFESTS / "inferenceservice.yaml").read_text())
    container = predictor["spec"]["predictor"]["containers"][0]
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    for name, (spec, platform) in compiled_both.items():
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert set(executors) == set(spec["deploymentSpec"]["executors"]), name
        for executor_name, config in executors.items():
            (from_config_map,) = config["configMapAsEnv"]
            assert from_config_map["configMapName"] == CONFIG_MAP and from_config_map["optional"] is True
            mapped = {m["configMapKey"] for m in from_config_map["keyToEnv"]}
            # Every key the cluster's ConfigMap sets reaches every step (and no credential is in it).
            assert set(config_map["data"]) <= mapped, (executor_name, set(config_map["data"]) - mapped)
            assert "PROPENSITY_REDIS_PASSWORD" not in mapped
            (from_secret,) = config["secretAsEnv"]
            assert from_secret["secretName"] == SECRET and from_secret["optional"] is True
            assert secret_keys <= {m["secretKey"] for m in from_secret["keyToEnv"]}
            assert config["emptyDirMounts"] == [{"volumeName": "work", "mountPath": WORK_DIR}]
            # No shared volume: the Spark tables are on the object store.
            assert "pvcMount" not in config and config_map["data"]["PROPENSITY_TABLES"].startswith("s3://")
            # Spark steps advertise their pod's IP to the executors; no step reads it from the ConfigMap.
            assert "PROPENSITY_SPARK_DRIVER_HOST" not in mapped
            spark_steps = (
                "materialize",
                "build-training-set",
                "validate-data",
                "score-customers",
                "publish-latest",
                "check-scoring-drift",
                "check-prediction-drift",
                "check-realised-accuracy",
                "maintain-tables",
            )
            spark_step = any(s in executor_name for s in spark_steps)
            driver_host = [{"name": "PROPENSITY_SPARK_DRIVER_HOST", "fieldPath": "status.podIP"}]
            assert config.get("fieldPathAsEnv") == (driver_host if spark_step else None), executor_name
            assert config_map["data"]["PROPENSITY_HOME"] == WORK_DIR
        for executor in spec["deploymentSpec"]["executors"].values():
            resources = executor["container"]["resources"]
            assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
            assert resources["resourceMemoryLimit"]


def test_a_rerun_really_reruns_and_only_safe_steps_retry(compiled: dict[str, dict[str, Any]]) -> None:
    tasks = {
        f"{pipeline}/{name}": task
        for pipeline, spec in compiled.items()
        for name, task in tasks_by_component(spec).items()
    }
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    # Every step reads the lake, the registry or "today": none may come back from the cache (a
    # cached nightly run scores nothing; a cached validation would pass data it never saw).
    assert cached == set()
    retried = {name for name, task in tasks.items() if task.get("retryPolicy", {}).get("maxRetryCount")}
    for step in ("batch-scoring/materialize-features", "batch-scoring/score-customers", "training/train-candidates"):
        assert step in retried
    # Registration and alias moves are never retried blindly.
    for step in (
        "training/register-models",
        "training/promote-to-champion",
        "training/deploy-release",
        "monitoring/decide-retraining",
    ):
        assert step in tasks and step not in retried


def test_one_yaml_per_pipeline_on_the_project_image(compiled: dict[str, dict[str, Any]]) -> None:
    assert set(compiled) == {"training", "batch-scoring", "monitoring"}
    for spec in compiled.values():
        executors = spec["deploymentSpec"]["executors"].values()
        assert {e["container"]["image"] for e in executors} == {IMAGE}
        assert spec["schemaVersion"] == "2.1.0" and spec["pipelineInfo"]["name"].startswith("propensity-")


def test_components_are_thin_and_install_nothing(compiled: dict[str, dict[str, Any]]) -> None:
    for spec in compiled.values():
        for executor in spec["deploymentSpec"]["executors"].values():
            script = "\n".join(executor["container"]["command"] + executor["container"].get("args", []))
            assert "pip install" not in script
            body = script.split("def ", 1)[1]
            assert "import" in body and len(body.splitlines()) < 40


def test_training_pipeline_shape(compiled: dict[str, dict[str, Any]]) -> None:
    spec = compiled["training"]
    root = spec["root"]
    assert root["inputDefinitions"]["parameters"]["as_of_date"]["defaultValue"] == ""
    # 0: the deployment's settings decide, so a run the retraining trigger starts agrees with monitoring.
    assert root["inputDefinitions"]["parameters"]["training_window_days"]["defaultValue"] == 0
    assert root["inputDefinitions"]["parameters"]["label_horizon_days"]["defaultValue"] == 0
    tasks = root["dag"]["tasks"]
    # Window and horizon reach the steps that compute snapshots and labels; later steps read them
    # from the training set's lineage.
    for step in ("materialize-features", "build-training-set"):
        given = tasks[step]["inputs"]["parameters"]
        for parameter in ("training_window_days", "label_horizon_days"):
            assert given[parameter]["componentInputParameter"] == parameter, (step, parameter)
    gate = tasks["compare-with-champion"]["inputs"]
    assert gate["parameters"]["realtime_run_id"]["taskOutputParameter"]["producerTask"] == "train-realtime-model"
    # One task fits every candidate on one read of the training set (no per-candidate loop).
    assert not any(name.startswith("for-loop") for name in tasks)
    candidates = tasks["train-candidates"]
    assert "validate-data" in candidates["dependentTasks"]
    assert candidates["inputs"]["parameters"]["candidates"]["componentInputParameter"] == "candidates"
    assert "train-candidates" in tasks["evaluate-model"]["dependentTasks"]
    condition_name, condition = next((name, t) for name, t in tasks.items() if name.startswith("condition"))
    assert "== 'promote'" in condition["triggerPolicy"]["condition"]
    # Only a promoted challenger is deployed, after its aliases moved.
    branch = spec["components"][f"comp-{condition_name}"]["dag"]["tasks"]
    assert branch["deploy-release"]["dependentTasks"] == ["promote-to-champion"]
    source = branch["deploy-release"]["inputs"]["parameters"]["model_version"]
    assert source["componentInputParameter"] == "pipelinechannel--register-models-model_version"
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    assert {
        "Validate data (Great Expectations)",
        "Compare with champion",
        "Register in MLflow (challenger)",
    } <= names
    outputs = spec["components"]["comp-evaluate-model"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["roc"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    reports = {
        component: spec["components"][f"comp-{component}"]["outputDefinitions"]["artifacts"]
        for component in ("validate-data", "compare-with-champion")
    }
    assert reports["validate-data"]["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert reports["compare-with-champion"]["quality_report"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_monitoring_has_one_step_per_check_then_one_decision(compiled: dict[str, dict[str, Any]]) -> None:
    spec = compiled["monitoring"]
    tasks = spec["root"]["dag"]["tasks"]
    checks = ["check-inference-drift", "check-scoring-drift", "check-prediction-drift", "check-realised-accuracy"]
    assert set(tasks) == {"materialize-features", *checks, "decide-retraining"}
    # The decision waits for every check and reads their recorded outcomes.
    assert set(checks) <= set(tasks["decide-retraining"]["dependentTasks"])
    for check in checks:
        artifacts = spec["components"][f"comp-{check}"]["outputDefinitions"]["artifacts"]
        assert artifacts["report"]["artifactType"]["schemaTitle"] == "system.HTML"
        assert artifacts["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    decision = spec["components"]["comp-decide-retraining"]["outputDefinitions"]["artifacts"]
    assert decision["decision"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_parse_params() -> None:
    assert parse_params(["as_of_date=2025-06-30", "training_window_days=90", "x="]) == {
        "as_of_date": "2025-06-30",
        "training_window_days": 90,
        "x": "",
    }
    with pytest.raises(PropensityError):
        parse_params(["no-equals-sign"])


@pytest.fixture
def kfp_api() -> Iterator[KfpApi]:
    with kfp_api_server() as api:
        yield api


def test_submit_creates_a_run_as_the_pipeline_account(settings: Settings, kfp_api: KfpApi) -> None:
    on_kfp = settings.model_copy(update={"kfp_host": kfp_api.url, "image": IMAGE})
    run_id = submit("training", {"as_of_date": "2025-06-30"}, on_kfp)
    (run,) = kfp_api.runs.values()
    assert run["run_id"] == run_id and run["display_name"] == "propensity-training"
    assert run["runtime_config"]["parameters"] == {"as_of_date": "2025-06-30"}
    assert run["service_account"] == "propensity-pipeline"
    # The compiled pipeline reaches KFP with its image and its Kubernetes settings.
    executors = run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    assert run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    (experiment,) = kfp_api.experiments.values()
    assert run["experiment_id"] == experiment["experiment_id"] and experiment["display_name"] == "propensity"
    submit("training", {}, on_kfp)  # the experiment is reused, not created again
    assert len(kfp_api.experiments) == 1 and len(kfp_api.runs) == 2
    with pytest.raises(PropensityError, match="unknown parameter"):
        submit("training", {"typo": 1}, on_kfp)


def test_submit_authenticates_with_a_token_a_cookie_or_the_pod_account(
    settings: Settings, kfp_api: KfpApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = settings.model_copy(update={"kfp_host": kfp_api.url, "kfp_namespace": "team-a"})
    submit("batch-scoring", {}, base.model_copy(update={"kfp_token": SecretStr("tok-1")}))
    assert {r.headers.get("authorization") for r in kfp_api.requests} == {"Bearer tok-1"}
    assert next(iter(kfp_api.experiments.values()))["namespace"] == "team-a"

    kfp_api.requests.clear()
    submit("batch-scoring", {}, base.model_copy(update={"kfp_cookies": SecretStr("authservice_session=abc")}))
    assert {r.headers.get("cookie") for r in kfp_api.requests} == {"authservice_session=abc"}

    kfp_api.requests.clear()
    token = tmp_path / "token"
    token.write_text("pod-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    submit("batch-scoring", {}, base)
    assert {r.headers.get("authorization") for r in kfp_api.requests} == {"Bearer pod-token"}
    assert len(kfp_api.experiments) == 1  # found again in its namespace


def test_kfp_unreachable_or_refusing_gives_one_line(settings: Settings, kfp_api: KfpApi) -> None:
    with pytest.raises(PropensityError, match="no Kubeflow Pipelines host"):
        submit("training", {}, settings)
    kfp_api.fail_with = 403
    with pytest.raises(PropensityError, match=f"Kubeflow Pipelines at {kfp_api.url} answered HTTP 403"):
        submit("training", {}, settings, host=kfp_api.url)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{free.getsockname()[1]}"
    with pytest.raises(PropensityError, match=f"cannot reach Kubeflow Pipelines at {closed}"):
        schedule("batch-scoring", "0 2 * * *", settings, host=closed)


def test_schedule_replaces_only_what_changed_and_never_duplicates(settings: Settings, kfp_api: KfpApi) -> None:
    on_kfp = settings.model_copy(update={"kfp_host": kfp_api.url})
    created = schedule("batch-scoring", "0 2 * * *", on_kfp)
    assert created[0] == "created"
    assert schedule("batch-scoring", "0 2 * * *", on_kfp) == ("unchanged", created[1])
    (recurring,) = kfp_api.recurring_runs.values()
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *" and int(recurring["max_concurrency"]) == 1
    assert recurring["service_account"] == "propensity-pipeline" and recurring["no_catchup"] is True

    changes = [
        ("0 3 * * *", on_kfp, {}),  # cron
        ("0 3 * * *", on_kfp, {"score_date": "2025-06-30"}),  # parameters
        ("0 3 * * *", on_kfp.model_copy(update={"image": IMAGE}), {"score_date": "2025-06-30"}),  # image
        ("0 3 * * *", on_kfp.model_copy(update={"image": IMAGE, "kfp_service_account": "other"}), {}),  # account
    ]
    for cron, changed, params in changes:
        assert schedule("batch-scoring", cron, changed, params=params)[0] == "replaced"
        assert schedule("batch-scoring", cron, changed, params=params)[0] == "unchanged"
        assert len(kfp_api.recurring_runs) == 1
    (recurring,) = kfp_api.recurring_runs.values()
    executors = recurring["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    assert recurring["service_account"] == "other"

    schedule("monitoring", "0 4 * * *", on_kfp)  # another pipeline's recurring run is its own
    assert len(kfp_api.recurring_runs) == 2
    with pytest.raises(PropensityError, match="cron"):
        schedule("batch-scoring", "every night", on_kfp)


@pytest.mark.slow
def test_failed_local_run_names_the_cause(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A real kfp.local run that fails in a step: the CLI says why in one line, not just 'FAILURE'."""
    from propensity.cli import main

    assert main(["run", "batch-scoring"]) == 2  # no data ingested yet
    assert "PropensityError: no data in" in error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_local_run_never_retries_and_the_compiled_pipeline_still_does(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kfp.local honours retry policies; a failing local step must fail at once, not after minutes
    of backoff, while the cluster's pipeline keeps its retries."""
    from propensity.cli import main

    backoffs: list[float] = []
    sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: backoffs.append(s) if s >= 30 else sleep(s))
    assert main(["run", "batch-scoring"]) == 2  # no data: materialize fails on its first attempt
    assert backoffs == []  # its retry policy would wait 60 s before a second attempt
    compiled = {p.stem: read_compiled(p)[0] for p in compile_all(tmp_path, IMAGE)}
    assert tasks_by_component(compiled["batch-scoring"])["materialize-features"]["retryPolicy"]["maxRetryCount"] == 2
