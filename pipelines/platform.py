"""How each pipeline step runs on Kubernetes, compiled into the IR with kfp-kubernetes.

Every step gets:
* the settings: each `PROPENSITY_*` setting from the ConfigMap `propensity-config` (a key the
  ConfigMap does not set keeps its default), so a step on the cluster sees exactly the settings the
  predictor sees, never a silent embedded default;
* the credentials: the keys of the Secret `propensity-secrets` that exist (object storage, Redis,
  MLflow), as environment variables, never in the IR or the ConfigMap;
* a writable work directory (`PROPENSITY_HOME`, an emptyDir) for scratch space and logs;
* no volume for the Spark tables: they are Iceberg tables on the object store (`PROPENSITY_TABLES`,
  s3://...), committed through their catalog's database (`PROPENSITY_CATALOG`, in the Secret);
* resource requests and limits, retries where a rerun is safe, and caching only where a step's
  result depends on nothing but its inputs (anything that reads the lake, the registry or "today"
  must really rerun: a cached nightly scoring run would score nothing).

The ServiceAccount a run uses is not per step: `submit` and `schedule` pass it with the run.
kfp.local ignores all of this, so the embedded mode runs the same pipeline functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import kubernetes
from kfp.dsl import PipelineTask

from propensity.settings import CONFIG_MAP, SECRET, SECRET_SETTINGS, Settings

# Credentials a step may need, as named in the Secret and seen by the step's libraries (boto3/s3fs
# and MLflow read the AWS_* and MLFLOW_TRACKING_* names themselves). Each one is optional.
SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    *(f"PROPENSITY_{name.upper()}" for name in SECRET_SETTINGS),
)
WORK_DIR = "/var/lib/propensity"  # PROPENSITY_HOME in manifests/base/configmap.yaml


@dataclass(frozen=True)
class Resources:
    """What one kind of step asks of the cluster."""

    cpu: str
    memory: str
    memory_limit: str
    retries: int
    cache: bool


# Spark drivers in client mode (materialize, scoring, drift): the executors do the heavy work.
SPARK_DRIVER = Resources(cpu="1", memory="4Gi", memory_limit="8Gi", retries=2, cache=False)
# Model fits and evaluation on the capped training set, in the step's own process.
TRAINING = Resources(cpu="2", memory="4Gi", memory_limit="8Gi", retries=1, cache=False)
# Calls to MLflow and KFP that change what they point at: never retried blindly, never cached.
REGISTRY = Resources(cpu="250m", memory="1Gi", memory_limit="2Gi", retries=0, cache=False)


def settings_env() -> dict[str, str]:
    """ConfigMap key -> environment variable, one per non-secret setting (the driver's address is
    the pod's own, set per Spark step)."""
    skip = {*SECRET_SETTINGS, "spark_driver_host"}
    names = [f"PROPENSITY_{name.upper()}" for name in Settings.model_fields if name not in skip]
    return {name: name for name in names}


def on_cluster(task: PipelineTask, resources: Resources) -> PipelineTask:
    """Give a step its settings, credentials, work directory, resources, retries and caching."""
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, settings_env(), optional=True)
    if resources is SPARK_DRIVER:
        # Spark executors (client mode) reach the driver at its pod's IP.
        kubernetes.use_field_path_as_env(task, "PROPENSITY_SPARK_DRIVER_HOST", "status.podIP")
    kubernetes.use_secret_as_env(task, SECRET, {key: key for key in SECRET_KEYS}, optional=True)
    kubernetes.empty_dir_mount(task, volume_name="work", mount_path=WORK_DIR)
    task.set_cpu_request(resources.cpu).set_memory_request(resources.memory).set_memory_limit(resources.memory_limit)
    if resources.retries:
        task.set_retry(num_retries=resources.retries, backoff_duration="60s", backoff_factor=2)
    task.set_caching_options(resources.cache)
    return task
