"""Cluster security checks: the rendered manifests (manifests/) and the pods the project makes itself.

* Pod Security Standard "restricted" (the v1.30+ profile, which includes baseline):
  `restricted_violations` checks one pod spec the way the Pod Security admission does. Every pod spec
  the overlays render (the predictor) and the Spark executor pod template (propensity/spark.py) must
  have none; deliberately bad specs show the checker catches each rule. The namespace itself is not
  shipped, so manifests/README.md must tell the admin to label it `enforce=restricted`.
* RBAC grants exactly what the code calls. The deploy step and the rollback run against a local
  Kubernetes API (tests/kube_api.py) with the real `kubernetes` client; every request is recorded as
  (API group, resource, verb, object) and must equal the propensity-deployer Role. What Spark's JVM
  and KFP's backend call cannot be recorded here: documented constants, equal to their Roles.
* NetworkPolicies: a default deny for both directions, and a small evaluator of NetworkPolicy
  semantics checks that every flow the product needs (derived from the ConfigMap's URLs and Spark's
  ports) is allowed and that flows it does not need are not; no rule opens all sources or all ports.
* ServiceAccount tokens: only pods whose account calls the Kubernetes API get a token, and no pod
  runs as the namespace's `default` account.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from components.deploy import deploy, rollback
from propensity.errors import PropensityError
from propensity.settings import Settings, get_settings
from propensity.spark import kubernetes_conf
from tests import kube_api
from tests.http_stub import json_server
from tests.test_deploy import Predictor, register_releases, rollout
from tests.test_manifests import (
    MANIFESTS,
    NAMESPACE,
    OVERLAYS,
    PIPELINE_SA,
    PREDICTOR_SA,
    by_kind,
    ident,
    pod_specs,
    predictor,
    predictor_container,
    render,
    schema_errors,
    the,
)

Obj = dict[str, Any]
# The ServiceAccount pipeline runs use (`propensity submit` and `schedule` pass it with the run).
KFP_SERVICE_ACCOUNT = Settings.model_fields["kfp_service_account"].default

# ---------------------------------------------------------------------------------------------------
# Pod Security Standard "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/)

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# Baseline "Sysctls": the safe set (as of Kubernetes 1.32).
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
CONTAINER_KINDS = ("initContainers", "containers", "ephemeralContainers")
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def _context_violations(where: str, context: Obj) -> list[str]:
    """Rules that apply the same way to a pod's and a container's securityContext."""
    problems = []
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        problems.append(f"{where}: windowsOptions.hostProcess must not be true")
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{where}: seLinuxOptions.type {selinux['type']!r} is not allowed")
    if selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}: seLinuxOptions.user and .role must not be set")
    if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}: appArmorProfile must not be Unconfined")
    if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}: seccompProfile must not be Unconfined")
    if context.get("runAsUser") == 0:
        problems.append(f"{where}: runAsUser must not be 0")
    return problems


def _handler_hosts(container: Obj) -> list[str]:
    """Probe and lifecycle handlers that name a host (baseline: they must not)."""
    handlers = [(name, container.get(name) or {}) for name in PROBES]
    handlers += [(f"lifecycle.{hook}", h) for hook, h in (container.get("lifecycle") or {}).items()]
    return [
        f"{name}.{kind}.host"
        for name, handler in handlers
        for kind in ("httpGet", "tcpSocket")
        if (handler.get(kind) or {}).get("host")
    ]


def restricted_violations(pod: Obj, annotations: Mapping[str, str] | None = None) -> list[str]:
    """Everything in a pod spec that Pod Security admission rejects at level "restricted" (v1.30+,
    baseline included), as readable lines; empty when the pod is admitted. `annotations` are the
    pod's (AppArmor's annotation form)."""
    problems = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"pod: {field} must not be true")
    pod_context = pod.get("securityContext") or {}
    problems += _context_violations("pod", pod_context)
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"pod: sysctl {sysctl.get('name')} is not a safe sysctl")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            problems.append(f"volume {volume.get('name')}: hostPath volumes are forbidden")
        elif kinds - RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume.get('name')}: type {sorted(kinds)} is not allowed by restricted")
    for key, value in (annotations or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            problems.append(f"annotation {key}: AppArmor profile {value!r} is not allowed")
    for kind in CONTAINER_KINDS:
        for container in pod.get(kind) or []:
            where = f"{kind[:-1]} {container.get('name')}"
            context = container.get("securityContext") or {}
            problems += _context_violations(where, context)
            if context.get("privileged"):
                problems.append(f"{where}: privileged must not be true")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            capabilities = context.get("capabilities") or {}
            if "ALL" not in (capabilities.get("drop") or []):
                problems.append(f"{where}: capabilities.drop must include ALL")
            if extra := set(capabilities.get("add") or []) - ADDABLE_CAPABILITIES:
                problems.append(f"{where}: capabilities.add {sorted(extra)} (only NET_BIND_SERVICE may be added)")
            if context.get("procMount", "Default") != "Default":
                problems.append(f"{where}: procMount must be Default")
            # Either level may set these; the container's own setting wins.
            if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
                problems.append(f"{where}: runAsNonRoot must be true (on the pod or the container)")
            seccomp = context.get("seccompProfile") or pod_context.get("seccompProfile") or {}
            if seccomp.get("type") not in SECCOMP_TYPES:
                problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
            if host_ports := [p["hostPort"] for p in container.get("ports") or [] if p.get("hostPort")]:
                problems.append(f"{where}: hostPort {host_ports} must not be set")
            problems += [f"{where}: {field} must not be set" for field in _handler_hosts(container)]
    return problems


def good_pod() -> Obj:
    """A small pod that "restricted" admits; the bad specs below each break one rule of it."""
    return {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "app",
                "image": "propensity",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
        "volumes": [{"name": "work", "emptyDir": {}}],
    }


DELETE = object()


def patched(pod: Obj, changes: Mapping[str, Any]) -> Obj:
    """`pod` with each dotted path (list indexes as numbers) set to a value, or removed for DELETE."""
    pod = copy.deepcopy(pod)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node: Any = pod
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        elif value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return pod


SC = "containers.0.securityContext"
BAD_PODS: dict[str, tuple[dict[str, Any], str]] = {
    "host network": ({"hostNetwork": True}, "hostNetwork"),
    "host PID": ({"hostPID": True}, "hostPID"),
    "host IPC": ({"hostIPC": True}, "hostIPC"),
    "privileged": ({f"{SC}.privileged": True}, "privileged"),
    "added capability": ({f"{SC}.capabilities.add": ["NET_ADMIN"]}, "capabilities.add ['NET_ADMIN']"),
    "ALL not dropped": ({f"{SC}.capabilities.drop": ["NET_RAW"]}, "drop must include ALL"),
    "hostPath volume": ({"volumes.0": {"name": "host", "hostPath": {"path": "/"}}}, "hostPath"),
    "NFS volume": ({"volumes.0": {"name": "nfs", "nfs": {"server": "x", "path": "/"}}}, "not allowed"),
    "host port": ({"containers.0.ports.0.hostPort": 8080}, "hostPort"),
    "privilege escalation unset": ({f"{SC}.allowPrivilegeEscalation": DELETE}, "allowPrivilegeEscalation"),
    "privilege escalation true": ({f"{SC}.allowPrivilegeEscalation": True}, "allowPrivilegeEscalation"),
    "runAsNonRoot unset": ({"securityContext.runAsNonRoot": DELETE}, "runAsNonRoot"),
    "runAsNonRoot false on a container": ({f"{SC}.runAsNonRoot": False}, "runAsNonRoot"),
    "root user on the pod": ({"securityContext.runAsUser": 0}, "runAsUser must not be 0"),
    "root user on a container": ({f"{SC}.runAsUser": 0}, "runAsUser must not be 0"),
    "seccomp unset": ({"securityContext.seccompProfile": DELETE}, "seccompProfile"),
    "seccomp unconfined": ({f"{SC}.seccompProfile": {"type": "Unconfined"}}, "seccompProfile"),
    "unsafe sysctl": ({"securityContext.sysctls": [{"name": "kernel.msgmax", "value": "1"}]}, "kernel.msgmax"),
    "unmasked /proc": ({f"{SC}.procMount": "Unmasked"}, "procMount"),
    "AppArmor unconfined": ({f"{SC}.appArmorProfile": {"type": "Unconfined"}}, "appArmorProfile"),
    "SELinux type": ({f"{SC}.seLinuxOptions": {"type": "spc_t"}}, "seLinuxOptions.type"),
    "SELinux user": ({"securityContext.seLinuxOptions": {"user": "system_u"}}, "seLinuxOptions.user"),
    "Windows host process": ({f"{SC}.windowsOptions": {"hostProcess": True}}, "hostProcess"),
    "probe host": ({"containers.0.readinessProbe.httpGet.host": "10.0.0.1"}, "readinessProbe.httpGet.host"),
    "bad init container": (
        {"initContainers": [{"name": "init", "image": "x", "securityContext": {"privileged": True}}]},
        "initContainer init: privileged",
    ),
}
ADMITTED_PODS: dict[str, dict[str, Any]] = {
    "NET_BIND_SERVICE added": {f"{SC}.capabilities.add": ["NET_BIND_SERVICE"]},
    "seccomp and non-root on every container only": {
        "securityContext": {},
        f"{SC}.runAsNonRoot": True,
        f"{SC}.seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
    },
    "every allowed volume type": {
        "volumes": [{"name": kind.lower(), kind: {}} for kind in sorted(RESTRICTED_VOLUME_TYPES)],
    },
    "safe sysctl, default procMount, container_t": {
        "securityContext.sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}],
        f"{SC}.procMount": "Default",
        f"{SC}.seLinuxOptions": {"type": "container_t", "level": "s0:c1,c2"},
    },
}


def spark_settings(tmp_path: Path, objects: tuple[Obj, ...]) -> Settings:
    """Settings of a Spark step on the cluster, from the overlay's ConfigMap."""
    data = the(objects, "ConfigMap", "propensity-config")["data"]
    return get_settings(
        home=tmp_path / "home",
        tables=data["PROPENSITY_TABLES"],
        catalog="postgresql+psycopg://catalog@db:5432/catalog",
        spark_master=data["PROPENSITY_SPARK_MASTER"],
        spark_driver_host="10.1.2.3",
        spark_namespace=NAMESPACE,
    )


def executor_pod(conf: Mapping[str, str]) -> Obj:
    """The executor pod Spark creates from the template propensity/spark.py points it at: the
    template plus what Spark adds (BasicExecutorFeatureStep, LocalDirsFeatureStep and the executors'
    conf ConfigMap), none of which touches the pod's security context."""
    template = yaml.safe_load(Path(conf["spark.kubernetes.executor.podTemplateFile"]).read_text())
    pod = copy.deepcopy(template)
    pod["metadata"].setdefault("labels", {}).update(SPARK_EXECUTOR_LABELS)
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    container = spec["containers"][0]
    container.update(image=conf["spark.kubernetes.container.image"], args=["executor"])
    container.setdefault("ports", []).append({"name": "blockmanager", "containerPort": 7079})
    escalation = conf.get("spark.kubernetes.executor.securityContext.allowPrivilegeEscalation", "false")
    container.setdefault("securityContext", {})["allowPrivilegeEscalation"] = escalation == "true"
    container.setdefault("volumeMounts", []).append({"name": "spark-local-dir-1", "mountPath": "/var/data/spark-1"})
    spec.setdefault("volumes", []).extend(
        [
            {"name": "spark-local-dir-1", "emptyDir": {}},
            {"name": "spark-conf-volume-exec", "configMap": {"name": "spark-exec-conf-map"}},
        ]
    )
    return pod


@pytest.mark.parametrize("name", list(BAD_PODS))
def test_the_restricted_checker_catches_each_rule(name: str) -> None:
    changes, expected = BAD_PODS[name]
    problems = restricted_violations(patched(good_pod(), changes))
    assert any(expected in problem for problem in problems), f"{name}: expected {expected!r} in {problems}"


@pytest.mark.parametrize("name", list(ADMITTED_PODS))
def test_the_restricted_checker_admits_what_the_profile_allows(name: str) -> None:
    assert restricted_violations(good_pod()) == []
    assert restricted_violations(patched(good_pod(), ADMITTED_PODS[name])) == []


def test_the_restricted_checker_reads_apparmor_annotations() -> None:
    key = f"{APPARMOR_ANNOTATION}app"
    assert restricted_violations(good_pod(), {key: "runtime/default"}) == []
    assert restricted_violations(good_pod(), {key: "localhost/strict"}) == []
    assert any("AppArmor" in p for p in restricted_violations(good_pod(), {key: "unconfined"}))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_pod_meets_pod_security_restricted(overlay: str) -> None:
    pods = [(obj, pod) for obj in render(overlay) for pod in pod_specs(obj)]
    assert pods, f"{overlay} renders no pod specs"
    problems = [
        f"{ident(obj)}: {problem}"
        for obj, pod in pods
        for problem in restricted_violations(pod, obj["metadata"].get("annotations"))
    ]
    assert not problems, "\n".join(problems)


def test_spark_executor_pods_meet_pod_security_restricted(tmp_path: Path) -> None:
    conf = kubernetes_conf(spark_settings(tmp_path, render("production")))
    pod = executor_pod(conf)
    assert restricted_violations(pod["spec"], pod["metadata"].get("annotations")) == []
    # Spark writes allowPrivilegeEscalation from its own setting over the template's: pinned to false.
    assert conf["spark.kubernetes.executor.securityContext.allowPrivilegeEscalation"] == "false"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_namespace_enforces_pod_security_restricted(overlay: str) -> None:
    namespaces = by_kind(render(overlay), "Namespace")
    for namespace in namespaces:
        labels = namespace["metadata"].get("labels") or {}
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", ident(namespace)
    if not namespaces:  # created by hand or by a Kubeflow Profile: the deploy steps must label it
        readme = (MANIFESTS / "README.md").read_text()
        pattern = rf"kubectl label (ns|namespace) {NAMESPACE} [^\n]*pod-security\.kubernetes\.io/enforce=restricted"
        assert re.search(pattern, readme), "manifests/README.md must label the namespace enforce=restricted"


# ---------------------------------------------------------------------------------------------------
# RBAC: exactly the verbs the code calls

# /api/v1/... and /apis/<group>/<version>/..., optionally namespaced, a resource, a name, a subresource.
API_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<namespace>[^/]+))?"
    r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<subresource>[^/]+))?$"
)


@dataclass(frozen=True)
class ApiCall:
    group: str
    resource: str
    verb: str
    namespace: str | None
    name: str | None


def api_call(method: str, path: str) -> ApiCall:
    """The RBAC request attributes of one HTTP request to the Kubernetes API."""
    url = urlsplit(path)
    match = API_PATH.match(url.path)
    assert match, f"not a Kubernetes resource path: {path}"
    name = match["name"]
    watch = parse_qs(url.query).get("watch", ["false"])[0] in ("true", "1")
    verbs = {
        "GET": "watch" if watch else "get" if name else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }
    resource = match["resource"] + (f"/{match['subresource']}" if match["subresource"] else "")
    return ApiCall(match["group"] or "", resource, verbs[method], match["namespace"], name)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/pods/p", ("", "pods", "get", "ns", "p")),
        ("GET", "/api/v1/namespaces/ns/pods?labelSelector=a%3Db", ("", "pods", "list", "ns", None)),
        ("GET", "/api/v1/namespaces/ns/pods?watch=true", ("", "pods", "watch", "ns", None)),
        ("POST", "/api/v1/namespaces/ns/configmaps", ("", "configmaps", "create", "ns", None)),
        (
            "PUT",
            "/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices/i",
            ("serving.kserve.io", "inferenceservices", "update", "ns", "i"),
        ),
        ("PATCH", "/api/v1/namespaces/ns/pods/p/status", ("", "pods/status", "patch", "ns", "p")),
        ("DELETE", "/api/v1/namespaces/ns/pods/p", ("", "pods", "delete", "ns", "p")),
        ("DELETE", "/api/v1/namespaces/ns/pods?labelSelector=x", ("", "pods", "deletecollection", "ns", None)),
    ],
)
def test_requests_map_to_rbac_verbs(method: str, path: str, expected: tuple[str, ...]) -> None:
    assert api_call(method, path) == ApiCall(*expected)


Grants = dict[tuple[str, str, str], frozenset[str]]  # (API group, resource, verb) -> resourceNames (empty: all)


def grants(role: Obj) -> Grants:
    """What a Role allows, one entry per (API group, resource, verb)."""
    out: Grants = {}
    for rule in role["rules"]:
        names = frozenset(rule.get("resourceNames") or [])
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert (group, resource, verb) not in out, f"{ident(role)} grants {resource} {verb} twice"
                    out[(group, resource, verb)] = names
    return out


def bound_roles(objects: tuple[Obj, ...], account: str) -> set[str]:
    return {
        binding["roleRef"]["name"]
        for binding in by_kind(objects, "RoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"])
    }


def record_deploy_and_rollback(settings: Settings, isvc: Obj) -> list[ApiCall]:
    """Every Kubernetes API request of the deploy step's paths: a canary promoted, a canary rolled
    back, a manual rollback. The real client against tests/kube_api.py, through a recorder that
    keeps the whole request line (the query too: `?watch=` makes a GET a watch)."""
    stand_in = Predictor()
    calls: list[ApiCall] = []
    with json_server(lambda handler, _: stand_in.answer(handler.path)) as predictor_url:
        stand_in.url = predictor_url
        api = kube_api.KubeApi(copy.deepcopy(isvc), canary_url=predictor_url)
        stand_in.pins = api.pins

        def answer(handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, Any]:
            calls.append(api_call(handler.command, handler.path))
            return api.handle(handler.command, handler.path.split("?", 1)[0], json.loads(raw or b"{}"))

        with json_server(answer) as api_url:
            api.url = api_url
            register_releases(settings, 3)
            k8s = settings.model_copy(
                update={
                    "deploy_target": "kubernetes",
                    "deploy_namespace": isvc["metadata"]["namespace"],
                    "deploy_timeout_seconds": 5.0,
                    "deploy_smoke_requests": 3,
                }
            )
            deploy(k8s, "1", rollout(k8s, api))  # canary, then promoted
            deploy(k8s, "2", rollout(k8s, api))
            stand_in.status = 500
            with pytest.raises(PropensityError, match="rolled back"):
                deploy(k8s, "3", rollout(k8s, api))  # canary fails: the previous spec is restored
            stand_in.status = 200
            rollback(k8s, rollout(k8s, api))  # back to 1, all traffic at once
    assert len(api.puts) >= 6, "the scenario did not reach every path of the deploy step"
    return calls


def test_the_deployer_role_grants_exactly_what_deploy_and_rollback_call(settings: Settings) -> None:
    objects = render("production")
    isvc = the(objects, "InferenceService", "propensity")
    calls = record_deploy_and_rollback(settings, isvc)
    assert {call.namespace for call in calls} == {NAMESPACE}, "a Role grants in its own namespace only"
    used: Grants = {}
    for call in calls:
        key = (call.group, call.resource, call.verb)
        used[key] = used.get(key, frozenset()) | {call.name or "<collection>"}
    role = the(objects, "Role", "propensity-deployer")
    assert grants(role) == used, f"{ident(role)} must grant exactly what the deploy step calls: {used}"
    # The deploy step runs in a pipeline pod, as the run's ServiceAccount.
    assert KFP_SERVICE_ACCOUNT == PIPELINE_SA
    assert "propensity-deployer" in bound_roles(objects, PIPELINE_SA)


# What Spark's Kubernetes scheduler backend calls in client mode (Spark 4, fabric8 client; read from
# the classes in pyspark's spark-kubernetes jar), with the settings propensity/spark.py sets. Spark's
# JVM makes these calls, so they cannot be recorded here.
SPARK_DRIVER_CALLS: dict[tuple[str, str, str], str] = {
    ("", "pods", "get"): "ExecutorPodsAllocator reads the driver's own pod (spark.kubernetes.driver.pod.name) "
    "to own the executors; ExecutorPodsLifecycleManager reads an executor before deleting it",
    ("", "pods", "list"): "ExecutorPodsPollingSnapshotSource lists the executors; waitUntilReady on the "
    "driver pod; doKillExecutors finds running executors",
    ("", "pods", "watch"): "ExecutorPodsWatchSnapshotSource watches the executors; waitUntilReady",
    ("", "pods", "create"): "ExecutorPodsAllocator creates the executor pods",
    ("", "pods", "delete"): "ExecutorPodsLifecycleManager deletes a finished executor "
    "(spark.kubernetes.executor.deleteOnTermination=true)",
    ("", "pods", "deletecollection"): "ExecutorPodsAllocator deletes pending executors that time out and, on "
    "stop, all executors, by label; doKillExecutors",
    ("", "configmaps", "create"): "KubernetesClusterSchedulerBackend.start creates the executors' Spark conf "
    "ConfigMap (spark.kubernetes.executor.disableConfigMap=false)",
    ("", "configmaps", "deletecollection"): "KubernetesClusterSchedulerBackend.stop deletes it by label",
}
# The settings that keep Spark from calling anything else.
SPARK_LEAST_PRIVILEGE_CONF = {
    # Delete finished executors instead of labelling them inactive (pods patch).
    "spark.kubernetes.executor.deleteOnTermination": "true",
    # Client mode has no driver Service: stop() would delete Services by label (services deletecollection).
    "spark.kubernetes.driver.service.deleteOnTermination": "false",
    # No claims created by Spark (persistentvolumeclaims list, deletecollection; create for OnDemand ones).
    "spark.kubernetes.driver.ownPersistentVolumeClaim": "false",
}
# Settings that would need more verbs (pods patch; statefulsets/deployments; persistentvolumeclaims create).
SPARK_MORE_PRIVILEGE_CONF = re.compile(
    r"spark\.kubernetes\.(executor\.decommissionLabel|executor\.podDeletionCost|allocation\.pods\.allocator"
    r"|executor\.volumes\..*claimName|executor\.disableConfigMap)"
)


def test_the_spark_driver_role_grants_exactly_what_spark_calls(tmp_path: Path) -> None:
    objects = render("production")
    conf = kubernetes_conf(spark_settings(tmp_path, objects))
    assert {key: conf.get(key) for key in SPARK_LEAST_PRIVILEGE_CONF} == SPARK_LEAST_PRIVILEGE_CONF
    assert not [key for key in conf if SPARK_MORE_PRIVILEGE_CONF.match(key)]
    role = the(objects, "Role", "propensity-spark-driver")
    expected = {key: frozenset[str]() for key in SPARK_DRIVER_CALLS}
    assert grants(role) == expected, f"{ident(role)} must grant exactly SPARK_DRIVER_CALLS"
    assert "propensity-spark-driver" in bound_roles(objects, PIPELINE_SA)


# What KFP v2's backend needs from the account a run's pods use (propensity-pipeline); KFP's and
# Argo's own binaries make these calls. (group, resource, verb) -> (resourceNames, why).
KFP_RUN_CALLS: dict[tuple[str, str, str], tuple[frozenset[str], str]] = {
    ("argoproj.io", "workflowtaskresults", "create"): (
        frozenset(),
        "Argo's executor (wait container, Argo 3.4+) reports a step's outputs as a WorkflowTaskResult",
    ),
    ("argoproj.io", "workflowtaskresults", "patch"): (frozenset(), "... and updates it"),
    ("", "configmaps", "get"): (
        frozenset({"kfp-launcher"}),
        "KFP's driver and launcher read the namespace's launcher settings (pipeline root)",
    ),
    ("", "secrets", "get"): (
        frozenset({"mlpipeline-minio-artifact"}),
        "KFP's launcher reads the artifact store's credentials",
    ),
}


def test_the_kfp_run_role_grants_exactly_what_kfp_calls() -> None:
    objects = render("production")
    role = the(objects, "Role", "propensity-kfp-run")
    assert grants(role) == {key: names for key, (names, _) in KFP_RUN_CALLS.items()}
    assert "propensity-kfp-run" in bound_roles(objects, PIPELINE_SA)


# ---------------------------------------------------------------------------------------------------
# NetworkPolicies


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Address:
    """Something that is not a pod: the Kubernetes API server, the internet."""

    name: str
    ip: str


Endpoint = Pod | Address


def namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and key in labels and labels[key] in values)
            or (operator == "Exists" and key not in labels)
            or (operator == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def peer_matches(peer: Obj, policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        if not isinstance(endpoint, Address):
            return False  # pod addresses are not modelled
        ip, block = ipaddress.ip_address(endpoint.ip), peer["ipBlock"]
        excluded = any(ip in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])
        return ip in ipaddress.ip_network(block["cidr"]) and not excluded
    if not isinstance(endpoint, Pod):
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], namespace_labels(endpoint.namespace)):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector") or {}, endpoint.labels)


def port_matches(entry: Obj, port: int, protocol: str) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    if "port" not in entry:
        return True
    assert isinstance(entry["port"], int), "named ports are not used here"
    return bool(entry["port"] <= port <= entry.get("endPort", entry["port"]))


def policy_types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    return list(spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])])


def direction_allows(policies: list[Obj], direction: str, pod: Pod, peer: Endpoint, port: int, protocol: str) -> bool:
    """NetworkPolicy semantics for one side of a connection: a pod no policy isolates in `direction`
    allows everything; an isolated one only what some rule of a policy selecting it allows."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applying = [
        policy
        for policy in policies
        if policy["metadata"]["namespace"] == pod.namespace
        and direction in policy_types(policy)
        and selector_matches(policy["spec"]["podSelector"], pod.labels)
    ]
    return not applying or any(
        (
            not rule.get(peers_key)
            or any(peer_matches(p, policy["metadata"]["namespace"], peer) for p in rule[peers_key])
        )
        and (not rule.get("ports") or any(port_matches(entry, port, protocol) for entry in rule["ports"]))
        for policy in applying
        for rule in policy["spec"].get(rules_key) or []
    )


def flow_allowed(policies: list[Obj], source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Whether a connection gets through: the source's egress and the target's ingress both allow it."""
    egress = not isinstance(source, Pod) or direction_allows(policies, "Egress", source, target, port, protocol)
    ingress = not isinstance(target, Pod) or direction_allows(policies, "Ingress", target, source, port, protocol)
    return egress and ingress


@dataclass(frozen=True)
class Flow:
    what: str
    source: Endpoint
    target: Endpoint
    port: int
    protocol: str = "TCP"


# Labels others put on the project's pods: KServe on the predictor's (constants.InferenceServicePodLabelKey
# and KServiceComponentLabel), KFP v2 on every pod of a run (the Argo workflow's podMetadata), Spark on its
# executors (Constants.SPARK_ROLE_LABEL, SPARK_APP_ID_LABEL, SPARK_EXECUTOR_ID_LABEL).
KSERVE_PREDICTOR_LABELS = {"serving.kserve.io/inferenceservice": "{name}", "component": "predictor"}
KFP_POD_LABELS = {"pipelines.kubeflow.org/v2_component": "true", "workflows.argoproj.io/workflow": "training-x1"}
SPARK_EXECUTOR_LABELS = {"spark-role": "executor", "spark-app-selector": "spark-0123", "spark-exec-id": "1"}
# Where KFP's launcher and driver call (in the KFP API's namespace), and where Knative and Istio run.
KFP_LAUNCHER_SERVICES = {"ml-pipeline": 8887, "metadata-grpc-service": 8080}
ISTIO, KNATIVE = "istio-system", "knative-serving"
# Knative's queue-proxy, in front of the predictor's container: requests (8012), autoscaler metrics (9090).
QUEUE_PROXY_PORT, QUEUE_PROXY_METRICS_PORT = 8012, 9090
# The deploy step's smoke requests reach the canary's tagged URL through Istio: the ingress gateway
# (container port 8080) or, for a cluster-local URL, Knative's local gateway (8081).
GATEWAY_PORTS = {"istio-ingressgateway": 8080, "knative-local-gateway": 8081}
API_SERVER = Address("the Kubernetes API server", "172.20.0.10")
API_SERVER_PORT = 6443  # where the `kubernetes` Service (443) usually forwards
INTERNET = Address("the internet", "93.184.216.34")
DNS = Pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"})


def service(url: str, own_namespace: str) -> tuple[Endpoint, int]:
    """The pod (or the API server) a setting's URL reaches, and its port: `<svc>.<namespace>.svc...`,
    or a bare `<svc>` in the pod's own namespace."""
    parts = urlsplit(url.removeprefix("k8s://") if "://" in url else f"tcp://{url}")
    assert parts.hostname, url
    port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    labels = parts.hostname.split(".")
    if labels[0] == "kubernetes" and labels[1:2] in ([], ["default"]):
        return API_SERVER, port
    namespace = labels[1] if len(labels) > 1 else own_namespace
    return Pod(labels[0], namespace, {"app.kubernetes.io/name": labels[0]}), port


def feast_registry_url() -> str:
    """The Feast registry is a credential (in the Secret): its shape is the one manifests/README.md shows."""
    match = re.search(r"PROPENSITY_FEAST_REGISTRY=(\S+)", (MANIFESTS / "README.md").read_text())
    assert match, "manifests/README.md shows no PROPENSITY_FEAST_REGISTRY"
    return match.group(1)


@dataclass(frozen=True)
class Workloads:
    predictor: Pod
    pipeline: Pod
    executor: Pod
    spark_ports: tuple[int, int]  # driver RPC, block manager


def workloads(objects: tuple[Obj, ...], tmp_path: Path) -> Workloads:
    isvc = the(objects, "InferenceService", "propensity")["metadata"]["name"]
    conf = kubernetes_conf(spark_settings(tmp_path, objects))
    executor_labels = executor_pod(conf)["metadata"]["labels"]
    return Workloads(
        predictor=Pod("predictor", NAMESPACE, {k: v.format(name=isvc) for k, v in KSERVE_PREDICTOR_LABELS.items()}),
        pipeline=Pod("pipeline step", NAMESPACE, KFP_POD_LABELS),
        executor=Pod("Spark executor", NAMESPACE, executor_labels),
        spark_ports=(int(conf["spark.driver.port"]), int(conf["spark.blockManager.port"])),
    )


def needed_flows(objects: tuple[Obj, ...], w: Workloads) -> list[Flow]:
    """Every connection the product makes, from the overlay's settings and Spark's configuration."""
    data = the(objects, "ConfigMap", "propensity-config")["data"]
    mlflow = service(data["PROPENSITY_MLFLOW_TRACKING_URI"], NAMESPACE)
    redis = service(data["PROPENSITY_REDIS_CONNECTION"], NAMESPACE)
    storage = service(data["PROPENSITY_S3_ENDPOINT_URL"], NAMESPACE)
    registry = service(feast_registry_url(), NAMESPACE)
    kfp_api, kfp_port = service(data["PROPENSITY_KFP_HOST"], NAMESPACE)
    api, api_port = service(data["PROPENSITY_SPARK_MASTER"], NAMESPACE)
    assert api == API_SERVER and isinstance(kfp_api, Pod)
    driver_port, block_manager = w.spark_ports
    container_port = predictor_container(objects)["ports"][0]["containerPort"]
    flows = []
    for pod in (w.predictor, w.pipeline, w.executor):
        flows += [Flow(f"{pod.name} resolves names", pod, DNS, 53, protocol) for protocol in ("UDP", "TCP")]
        for name, (target, port) in {
            "MLflow": mlflow,
            "Redis": redis,
            "object storage": storage,
            "the Feast registry": registry,
        }.items():
            flows.append(Flow(f"{pod.name} -> {name}", pod, target, port))
    flows += [
        Flow("pipeline -> KFP API", w.pipeline, kfp_api, kfp_port),
        *(
            Flow(f"KFP launcher -> {name}", w.pipeline, Pod(name, kfp_api.namespace, {"app": name}), port)
            for name, port in KFP_LAUNCHER_SERVICES.items()
        ),
        Flow("pipeline -> Kubernetes API (Service port)", w.pipeline, api, api_port),
        Flow("pipeline -> Kubernetes API (server port)", w.pipeline, api, API_SERVER_PORT),
        *(
            Flow(f"deploy step smoke requests -> {name}", w.pipeline, Pod(name, ISTIO, {"app": name}), port)
            for name, port in GATEWAY_PORTS.items()
        ),
        Flow("executor -> driver RPC", w.executor, w.pipeline, driver_port),
        Flow("executor -> driver block manager", w.executor, w.pipeline, block_manager),
        Flow("driver -> executor block manager", w.pipeline, w.executor, block_manager),
        Flow("executor -> executor (shuffle)", w.executor, w.executor, block_manager),
        Flow("Istio gateway -> queue-proxy", Pod("gw", ISTIO, {"app": "istio-ingressgateway"}), w.predictor, 8012),
        Flow("activator -> queue-proxy", Pod("activator", KNATIVE, {"app": "activator"}), w.predictor, 8012),
        Flow("autoscaler -> queue-proxy metrics", Pod("as", KNATIVE, {"app": "autoscaler"}), w.predictor, 9090),
        Flow("gateway -> predictor container", Pod("gw", ISTIO, {"app": "istio-ingressgateway"}), w.predictor, 8080),
    ]
    assert container_port == 8080 and QUEUE_PROXY_PORT == 8012 and QUEUE_PROXY_METRICS_PORT == 9090
    return flows


def unneeded_flows(objects: tuple[Obj, ...], w: Workloads) -> list[Flow]:
    """Connections nothing needs: each must be refused."""
    data = the(objects, "ConfigMap", "propensity-config")["data"]
    redis, redis_port = service(data["PROPENSITY_REDIS_CONNECTION"], NAMESPACE)
    mlflow, _ = service(data["PROPENSITY_MLFLOW_TRACKING_URI"], NAMESPACE)
    kfp_api, kfp_port = service(data["PROPENSITY_KFP_HOST"], NAMESPACE)
    driver_port, block_manager = w.spark_ports
    stranger = Pod("a pod of another namespace", "elsewhere", {"app": "x"})
    neighbour = Pod("another pod of the namespace", NAMESPACE, {"app": "x"})
    return [
        Flow("predictor -> Kubernetes API", w.predictor, API_SERVER, 443),
        Flow("predictor -> Kubernetes API server port", w.predictor, API_SERVER, API_SERVER_PORT),
        Flow("executor -> Kubernetes API", w.executor, API_SERVER, 443),
        Flow("predictor -> KFP API", w.predictor, kfp_api, kfp_port),
        Flow("predictor -> the internet", w.predictor, INTERNET, 443),
        Flow("executor -> the internet", w.executor, INTERNET, 443),
        Flow("pipeline -> the internet over plain HTTP", w.pipeline, INTERNET, 80),
        Flow("pipeline -> MLflow's namespace on another port", w.pipeline, mlflow, 5432),
        Flow("another namespace -> predictor", stranger, w.predictor, 8080),
        Flow("another namespace -> queue-proxy", stranger, w.predictor, QUEUE_PROXY_PORT),
        Flow("another namespace -> Spark driver", stranger, w.pipeline, driver_port),
        Flow("another pod of the namespace -> Spark driver", neighbour, w.pipeline, driver_port),
        Flow("another pod of the namespace -> executor", neighbour, w.executor, block_manager),
        Flow("predictor -> executor", w.predictor, w.executor, block_manager),
        Flow("executor -> driver on another port", w.executor, w.pipeline, 8080),
        Flow("another namespace -> Redis", stranger, redis, redis_port),
        Flow("another pod of the namespace -> Redis", neighbour, redis, redis_port),
        Flow("Knative's activator -> queue-proxy metrics from istio", Pod("gw", ISTIO, {}), w.predictor, 9090),
    ]


API_PORTS = {443, 6443}


def policy_problems(policy: Obj) -> list[str]:
    """What makes a NetworkPolicy too open: a rule that admits every source, any port, or every
    namespace, or egress to any address on other ports than the Kubernetes API's."""
    problems, spec = [], policy["spec"]
    where = ident(policy)
    if "policyTypes" not in spec:
        problems.append(f"{where}: policyTypes must be explicit")
    for rule in spec.get("ingress") or []:
        if not rule.get("from"):
            problems.append(f"{where}: an ingress rule without `from` admits every source")
    for rule in [*(spec.get("ingress") or []), *(spec.get("egress") or [])]:
        if not rule.get("ports"):
            problems.append(f"{where}: a rule without `ports` allows every port")
        for peer in [*(rule.get("from") or []), *(rule.get("to") or [])]:
            if peer.get("namespaceSelector") == {} or (peer.get("namespaceSelector") or {}).get("matchExpressions"):
                problems.append(f"{where}: peers name their namespaces (kubernetes.io/metadata.name)")
            if "ipBlock" in peer and ipaddress.ip_network(peer["ipBlock"]["cidr"]).prefixlen == 0:
                problems.append(f"{where}: an ipBlock of every address")
    for rule in spec.get("egress") or []:
        ports = {entry.get("port") for entry in rule.get("ports") or []}
        if not rule.get("to") and not ports <= API_PORTS:
            problems.append(f"{where}: egress to any address is for the Kubernetes API ports only, not {ports}")
    return problems


def network_policies(overlay: str) -> list[Obj]:
    policies = by_kind(render(overlay), "NetworkPolicy")
    assert policies, f"{overlay} renders no NetworkPolicy"
    return policies


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_are_valid(overlay: str) -> None:
    policies = network_policies(overlay)
    default_deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(policy_types(p)) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert default_deny, "no default-deny NetworkPolicy for both directions"
    problems = [problem for policy in policies for problem in policy_problems(policy)]
    problems += [error for policy in policies for error in schema_errors(policy)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("rule", "direction", "expected"),
    [
        ({"ports": [{"port": 8080}]}, "ingress", "without `from`"),
        ({"from": [{"podSelector": {}}]}, "ingress", "without `ports`"),
        ({"to": [{"namespaceSelector": {}}], "ports": [{"port": 5000}]}, "egress", "name their namespaces"),
        ({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 80}]}, "egress", "every address"),
        ({"ports": [{"port": 80}]}, "egress", "Kubernetes API ports only"),
    ],
)
def test_the_policy_check_finds_open_rules(rule: Obj, direction: str, expected: str) -> None:
    policy = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "open"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], direction: [rule]},
    }
    assert any(expected in problem for problem in policy_problems(policy)), policy_problems(policy)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_flows_the_product_needs(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    policies = network_policies(overlay)
    w = workloads(objects, tmp_path)
    blocked = [flow.what for flow in needed_flows(objects, w) if not flow_allowed(policies, *_ends(flow))]
    assert not blocked, f"needed flows the policies block: {blocked}"
    open_ = [flow.what for flow in unneeded_flows(objects, w) if flow_allowed(policies, *_ends(flow))]
    assert not open_, f"unneeded flows the policies allow: {open_}"


def _ends(flow: Flow) -> tuple[Endpoint, Endpoint, int, str]:
    return flow.source, flow.target, flow.port, flow.protocol


def test_the_flow_evaluator_follows_network_policy_semantics() -> None:
    """Guards the evaluator: unisolated pods allow all; isolation by any policy; peers and ports."""
    a, b = Pod("a", "ns", {"app": "a"}), Pod("b", "ns", {"app": "b"})
    other = Pod("c", "other", {"app": "a"})
    deny = {"metadata": {"namespace": "ns"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    allow_b_in = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "b"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}]}],
        },
    }
    allow_a_out = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 80, "endPort": 90}]}],
        },
    }
    assert flow_allowed([], a, b, 80)
    assert not flow_allowed([deny], a, b, 80)
    assert not flow_allowed([deny, allow_b_in], a, b, 80)  # a's egress is still denied
    assert flow_allowed([deny, allow_b_in, allow_a_out], a, b, 80)
    assert not flow_allowed([deny, allow_b_in, allow_a_out], a, b, 81)  # b admits 80 only
    assert not flow_allowed([deny, allow_b_in, allow_a_out], a, b, 80, "UDP")
    assert not flow_allowed([deny, allow_b_in, allow_a_out], other, b, 80)  # same labels, other namespace
    assert not flow_allowed([deny, allow_b_in, allow_a_out], b, other, 80)  # b may not egress


# ---------------------------------------------------------------------------------------------------
# ServiceAccount tokens

# The accounts whose pods call the Kubernetes API (Spark starts executors, the deploy step updates
# the InferenceService, KFP and Argo report results); every other pod runs without a token.
NEEDS_API = {PIPELINE_SA}


def all_pods(overlay: str, tmp_path: Path) -> Iterator[tuple[str, Obj]]:
    objects = render(overlay)
    for obj in objects:
        for pod in pod_specs(obj):
            yield ident(obj), pod
    yield "the Spark executor pod", executor_pod(kubernetes_conf(spark_settings(tmp_path, objects)))["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_pods_that_call_the_api_get_a_token(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(objects, "ServiceAccount")}
    with_roles = {
        s["name"]
        for binding in by_kind(objects, "RoleBinding")
        for s in binding["subjects"]
        if s["kind"] == "ServiceAccount"
    }
    problems = []
    for where, pod in all_pods(overlay, tmp_path):
        account = pod.get("serviceAccountName")
        if not account or account == "default":
            problems.append(f"{where}: runs as the namespace's `default` ServiceAccount")
            continue
        if account not in accounts:
            problems.append(f"{where}: ServiceAccount {account} is not in the manifests")
            continue
        if account not in NEEDS_API:
            if pod.get("automountServiceAccountToken") is not False:
                problems.append(f"{where}: automountServiceAccountToken must be false ({account} needs no API)")
            if accounts[account].get("automountServiceAccountToken") is not False:
                problems.append(f"ServiceAccount {account}: automountServiceAccountToken must be false")
            if account in with_roles:
                problems.append(f"ServiceAccount {account}: bound to a Role but its pods need no API")
    assert not problems, "\n".join(problems)
    # The predictor, explicitly: no token on the account nor in the pod.
    assert predictor(objects)["serviceAccountName"] == PREDICTOR_SA
    assert predictor(objects)["automountServiceAccountToken"] is False
    assert accounts[PREDICTOR_SA]["automountServiceAccountToken"] is False
    # Any account that keeps a token is one that needs it; pipeline runs use that one.
    keeps_token = {name for name, sa in accounts.items() if sa.get("automountServiceAccountToken") is not False}
    assert keeps_token <= NEEDS_API, f"ServiceAccounts with a token they do not need: {keeps_token - NEEDS_API}"
    assert KFP_SERVICE_ACCOUNT == PIPELINE_SA
