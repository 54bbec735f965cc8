"""Compiled IR YAML (what the KFP backend consumes) and the small code that talks to KFP."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from pipelines.platform import CONFIG_MAP, SECRET, WORK_DIR
from pipelines.runner import compile_all, parse_params, read_compiled, schedule, submit
from propensity.errors import PropensityError
from propensity.settings import Settings
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
    # Only steps whose result is a function of their input artifacts may come back from the cache;
    # anything reading the lake, the registry or "today" reruns (a cached nightly run scores nothing).
    assert cached == {"training/validate-training-set"}
    retried = {name for name, task in tasks.items() if task.get("retryPolicy", {}).get("maxRetryCount")}
    for step in ("batch-scoring/materialize-features", "batch-scoring/score-customers", "training/train-candidates"):
        assert step in retried
    # Registration and alias moves are never retried blindly.
    for step in ("training/register-models", "training/promote-to-champion", "monitoring/trigger-retraining"):
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
    assert root["inputDefinitions"]["parameters"]["training_window_days"]["defaultValue"] == 120
    tasks = root["dag"]["tasks"]
    # One task fits every candidate on one read of the training set (no per-candidate loop).
    assert not any(name.startswith("for-loop") for name in tasks)
    candidates = tasks["train-candidates"]
    assert "validate-training-set" in candidates["dependentTasks"]
    assert candidates["inputs"]["parameters"]["candidates"]["componentInputParameter"] == "candidates"
    assert "train-candidates" in tasks["evaluate-model"]["dependentTasks"]
    condition = next(t for name, t in tasks.items() if name.startswith("condition"))
    assert "== 'promote'" in condition["triggerPolicy"]["condition"]
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    assert {
        "Validate data (Great Expectations)",
        "Compare with champion",
        "Register in MLflow (challenger)",
    } <= names
    outputs = spec["components"]["comp-evaluate-model"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["roc"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"


def test_monitoring_retrains_only_on_drift(compiled: dict[str, dict[str, Any]]) -> None:
    tasks = compiled["monitoring"]["root"]["dag"]["tasks"]
    condition = next(t for name, t in tasks.items() if name.startswith("condition"))
    assert condition["triggerPolicy"]["condition"].endswith("== true")


def test_parse_params() -> None:
    assert parse_params(["as_of_date=2025-06-30", "training_window_days=90", "x="]) == {
        "as_of_date": "2025-06-30",
        "training_window_days": 90,
        "x": "",
    }
    with pytest.raises(PropensityError):
        parse_params(["no-equals-sign"])


class FakeKfp:
    """Records calls like kfp.Client would receive them."""

    def __init__(self) -> None:
        self.recurring: list[SimpleNamespace] = []
        self.runs: list[dict[str, Any]] = []

    def create_run_from_pipeline_package(self, pipeline_file: str, arguments: dict[str, Any], **kw: Any) -> Any:
        spec, platform = read_compiled(Path(pipeline_file))
        assert spec["deploymentSpec"] and platform["platforms"]["kubernetes"]
        self.runs.append({"arguments": arguments, **kw})
        return SimpleNamespace(run_id=f"run-{len(self.runs)}")

    def create_experiment(self, name: str, **kw: Any) -> Any:
        return SimpleNamespace(experiment_id="exp-1")

    def list_recurring_runs(self, **kw: Any) -> Any:
        return SimpleNamespace(recurring_runs=list(self.recurring))

    def create_recurring_run(self, experiment_id: str, job_name: str, **kw: Any) -> Any:
        run = SimpleNamespace(
            recurring_run_id=f"rr-{len(self.recurring) + 1}",
            display_name=job_name,
            trigger=SimpleNamespace(cron_schedule=SimpleNamespace(cron=kw["cron_expression"])),
            runtime_config=SimpleNamespace(parameters=kw["params"]),
            service_account=kw["service_account"],
        )
        self.recurring.append(run)
        return run

    def delete_recurring_run(self, recurring_run_id: str) -> Any:
        self.recurring = [r for r in self.recurring if r.recurring_run_id != recurring_run_id]


def test_submit_compiles_with_the_configured_image(settings: Settings) -> None:
    client = FakeKfp()
    run_id = submit("training", "http://kfp", {"as_of_date": "2025-06-30"}, settings, client=client)
    assert run_id == "run-1" and client.runs[0]["arguments"] == {"as_of_date": "2025-06-30"}
    assert client.runs[0]["service_account"] == settings.kfp_service_account == "propensity-pipeline"
    with pytest.raises(PropensityError, match="unknown parameter"):
        submit("training", "http://kfp", {"typo": 1}, settings, client=client)


def test_schedule_is_idempotent(settings: Settings) -> None:
    client = FakeKfp()
    assert schedule("batch-scoring", "http://kfp", "0 2 * * *", settings, client=client)[0] == "created"
    assert schedule("batch-scoring", "http://kfp", "0 2 * * *", settings, client=client)[0] == "unchanged"
    assert schedule("batch-scoring", "http://kfp", "0 3 * * *", settings, client=client)[0] == "replaced"
    assert len(client.recurring) == 1 and client.recurring[0].trigger.cron_schedule.cron == "0 0 3 * * *"
    assert client.recurring[0].service_account == "propensity-pipeline"
    with pytest.raises(PropensityError, match="cron"):
        schedule("batch-scoring", "http://kfp", "every night", settings, client=client)


def test_failed_local_run_names_the_cause(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A real kfp.local run that fails in a step: the CLI says why in one line, not just 'FAILURE'."""
    from propensity.cli import main

    assert main(["run", "batch-scoring"]) == 2  # no data ingested yet
    assert "PropensityError: no data in" in error_line(capsys.readouterr().err)
