"""Deploy a release (the batch model and the real-time model of one training run) and roll it back.

`deploy` moves the `champion` aliases of both models to the release, rolls the predictor out to it,
sends smoke requests to the new version and compares their error rate and p95 latency with the
thresholds in the settings. Within them, the release is kept; otherwise the previous spec and the
previous champion are restored, the release's batch version is marked rolled back (the predictor
stops serving its precomputed scores) and the step fails with the reason.

Two targets, one procedure:

* **kubernetes**: the InferenceService. The new version is pinned in the predictor's environment
  (`PROPENSITY_SERVING_MODEL_VERSION`), which makes a new Knative revision, with KServe's
  `canaryTrafficPercent` (Serverless mode, in the KServe 0.21 we pin: the new revision gets that share,
  the last rolled-out revision the rest). The smoke requests go to the canary's own URL (the `latest`
  tag route of `serving.kserve.io/enable-tag-routing`). Promotion removes `canaryTrafficPercent`;
  rollback restores the previous spec with `canaryTrafficPercent: 0`, which sends all traffic back to
  the last rolled-out revision at once.
* **local**: the server on `serving_port` follows the champion alias itself: it loads the new
  version in the background and swaps it in after its own checks. The step waits until the server
  answers with the new version, then sends the smoke requests. With no server running, moving the
  aliases is the deployment: a server started later loads the release.

Every deployment and rollback is recorded in `state/deployments.json` on the shared storage: what
`propensity rollback` goes back to.
"""

from __future__ import annotations

import copy
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from mlflow import MlflowClient

from propensity.errors import PropensityError
from propensity.settings import Settings, pod_namespace
from propensity.storage import Storage
from propensity.tracking import CHAMPION, ROLLED_BACK_TAG, Release, configure, promote, release, release_at
from serving.schema import SMOKE_HEADER

DEPLOYMENTS_KEY = "state/deployments.json"
DEPLOYED, ROLLED_BACK = "deployed", "rolled_back"
VERSION_ENV = "PROPENSITY_SERVING_MODEL_VERSION"
GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
PREDICT_PATH = "/v1/models/propensity:predict"
SMOKE_PREFIX = "deploy-smoke-"  # customer ids of smoke requests


@dataclass(frozen=True)
class Deployment:
    """One event of the deployment history."""

    batch_version: str
    realtime_version: str
    outcome: str  # deployed | rolled_back
    target: str
    at: str
    detail: str


def read_deployments(settings: Settings) -> list[Deployment]:
    return [Deployment(**d) for d in Storage(settings).read_json(DEPLOYMENTS_KEY, [])]


def _record(settings: Settings, rel: Release, outcome: str, detail: str) -> Deployment:
    event = Deployment(
        rel.batch.version,
        rel.realtime.version,
        outcome,
        settings.deploy_target,
        datetime.now(UTC).isoformat(timespec="seconds"),
        detail,
    )
    history = read_deployments(settings)
    Storage(settings).write_json(DEPLOYMENTS_KEY, [asdict(d) for d in [*history, event]])
    return event


def deployed_stack(history: list[Deployment]) -> list[str]:
    """Batch versions in service, oldest first: each deployment pushes one, each rollback of the
    version on top pops it. The last is the one serving now; the one before is what a rollback restores."""
    stack: list[str] = []
    for event in history:
        if event.outcome == DEPLOYED:
            stack = [v for v in stack if v != event.batch_version] + [event.batch_version]
        elif stack and stack[-1] == event.batch_version:
            stack.pop()
    return stack


@dataclass(frozen=True)
class SmokeResult:
    requests: int
    errors: int
    p95_ms: float
    first_error: str | None

    def problem(self, settings: Settings) -> str | None:
        """Why these smoke results fail the thresholds, or None if they pass."""
        if self.errors / self.requests > settings.deploy_max_error_rate:
            return (
                f"{self.errors} of {self.requests} smoke requests failed (allowed: "
                f"{settings.deploy_max_error_rate:.0%}); first: {self.first_error}"
            )
        if self.p95_ms > settings.deploy_max_p95_ms:
            return f"smoke p95 latency {self.p95_ms:.0f} ms is over {settings.deploy_max_p95_ms:.0f} ms"
        return None


def _smoke_request(client: httpx.Client, url: str, rel: Release, index: int) -> str | None:
    """One new customer (real-time path: the model this release changes); the error, if any."""
    body = {"instances": [{"customer_id": f"{SMOKE_PREFIX}{uuid.uuid4().hex[:12]}-{index}", "country": "unknown"}]}
    try:
        response = client.post(f"{url}{PREDICT_PATH}", json=body, headers={SMOKE_HEADER: "1"})
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        answer = response.json()["predictions"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a prediction: {response.text[:200]}"
    if (answer.get("model"), answer.get("model_version")) != (rel.realtime.name, rel.realtime.version):
        return f"answered by {answer.get('model')} v{answer.get('model_version')}, not v{rel.realtime.version}"
    return None


def smoke(url: str, rel: Release, requests: int, timeout: float = 10.0) -> SmokeResult:
    """Send `requests` requests one after another; count failures and wrong versions, time them."""
    errors: list[str] = []
    latencies: list[float] = []
    with httpx.Client(timeout=timeout) as client:
        for index in range(requests):
            started = time.perf_counter()
            error = _smoke_request(client, url, rel, index)
            latencies.append((time.perf_counter() - started) * 1000)
            if error:
                errors.append(error)
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else latencies[0]
    return SmokeResult(requests, len(errors), p95, errors[0] if errors else None)


class Rollout(Protocol):
    def start(self, rel: Release) -> str | None:
        """Put `rel` in front of a share of traffic; the URL that reaches only it (None: nothing runs)."""

    def finish(self) -> None:
        """Give the started release all traffic."""

    def restore(self) -> None:
        """Undo `start`: all traffic back to what served before."""

    def pin(self, rel: Release) -> str | None:
        """Serve `rel` with all traffic at once (a rollback to a release that served before)."""


class LocalServer:
    """A `propensity serve` on this machine, which follows the champion alias by itself."""

    def __init__(self, settings: Settings, poll_seconds: float = 1.0) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.serving_port}"
        self.poll_seconds = poll_seconds

    def _running(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/live", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, rel: Release) -> str | None:
        if not self._running():
            return None
        deadline = time.monotonic() + self.settings.deploy_timeout_seconds
        with httpx.Client(timeout=10) as client:
            while (error := _smoke_request(client, self.url, rel, 0)) is not None:
                if time.monotonic() > deadline:
                    raise PropensityError(
                        f"the server at {self.url} did not serve v{rel.realtime.version} within "
                        f"{self.settings.deploy_timeout_seconds:.0f}s ({error}); see its log"
                    )
                time.sleep(self.poll_seconds)
        return self.url

    def finish(self) -> None:
        pass  # the server already serves the champion alone

    def restore(self) -> None:
        pass  # the server follows the champion alias back

    def pin(self, rel: Release) -> str | None:
        return self.start(rel)


def _revision(isvc: dict[str, Any]) -> str | None:
    """The predictor's newest revision (KServe reports Knative's)."""
    predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    return predictor.get("latestCreatedRevision")


def _ready(isvc: dict[str, Any], not_revision: str | None) -> bool:
    """Ready on the spec last written, with its newest revision ready and, when the pod template
    changed, that revision a new one (the status can say the new generation before Knative has made
    the revision)."""
    status = isvc.get("status") or {}
    if status.get("observedGeneration", -1) < isvc["metadata"].get("generation", 0):
        return False
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    predictor = (status.get("components") or {}).get("predictor") or {}
    created = predictor.get("latestCreatedRevision")
    return conditions.get("Ready") == "True" and predictor.get("latestReadyRevision") == created != not_revision


def _canary_url(isvc: dict[str, Any]) -> str | None:
    predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    for route in predictor.get("traffic") or []:
        if route.get("tag") == "latest" and route.get("url"):
            return str(route["url"])
    return None


def _template(spec: dict[str, Any]) -> dict[str, Any]:
    """What makes a new Knative revision when it changes: the predictor, less its traffic split."""
    return {k: v for k, v in spec["predictor"].items() if k != "canaryTrafficPercent"}


def _pinned(spec: dict[str, Any], rel: Release, canary_percent: int | None) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    predictor = spec["predictor"]
    containers = predictor.get("containers") or []
    if not containers:
        raise PropensityError("the InferenceService's predictor has no container to pin the model version in")
    env = [e for e in containers[0].get("env") or [] if e.get("name") != VERSION_ENV]
    containers[0]["env"] = [*env, {"name": VERSION_ENV, "value": rel.batch.version}]
    if canary_percent is None:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = canary_percent
    return spec


class InferenceServiceRollout:
    """The predictor's InferenceService, through the Kubernetes API (get and replace, with the
    resourceVersion read, so a concurrent change makes the call fail rather than being overwritten)."""

    def __init__(self, settings: Settings, api: Any = None, poll_seconds: float = 2.0) -> None:
        from kubernetes import client, config

        if api is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.CustomObjectsApi()
        namespace = settings.deploy_namespace or pod_namespace()
        if not namespace:
            raise PropensityError("deploying to Kubernetes outside a pod needs PROPENSITY_DEPLOY_NAMESPACE")
        self.api = api
        self.settings = settings
        self.namespace = namespace
        self.name = settings.inference_service
        self.poll_seconds = poll_seconds
        self.previous: dict[str, Any] | None = None

    def _call(self, what: str, func: Any, *args: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(func(GROUP, API_VERSION, self.namespace, PLURAL, self.name, *args))
        except ApiException as error:
            raise PropensityError(
                f"could not {what} InferenceService {self.namespace}/{self.name}: HTTP {error.status} {error.reason}"
            ) from None

    def _get(self) -> dict[str, Any]:
        return self._call("read", self.api.get_namespaced_custom_object)

    def _replace(self, spec: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        """Write `spec` over `current` (as just read: its resourceVersion guards the update)."""
        body = {**current, "spec": spec}
        body.pop("status", None)
        return self._call("update", self.api.replace_namespaced_custom_object, body)

    def _wait_ready(self, generation: int, not_revision: str | None) -> dict[str, Any]:
        deadline = time.monotonic() + self.settings.deploy_timeout_seconds
        while True:
            isvc = self._get()
            if isvc["metadata"].get("generation", 0) >= generation and _ready(isvc, not_revision):
                return isvc
            if time.monotonic() > deadline:
                conditions = (isvc.get("status") or {}).get("conditions") or []
                why = "; ".join(f"{c.get('type')}={c.get('status')} {c.get('message', '')}".strip() for c in conditions)
                raise PropensityError(
                    f"InferenceService {self.namespace}/{self.name} was not ready within "
                    f"{self.settings.deploy_timeout_seconds:.0f}s ({why or 'no status'})"
                )
            time.sleep(self.poll_seconds)

    def _apply(self, spec: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        """Write `spec` and wait until it serves; a new revision if the pod template changed."""
        template_changed = _template(spec) != _template(current["spec"])
        updated = self._replace(spec, current)
        return self._wait_ready(
            int(updated["metadata"].get("generation", 0)), _revision(current) if template_changed else None
        )

    def start(self, rel: Release) -> str | None:
        self.previous = self._get()
        isvc = self._apply(_pinned(self.previous["spec"], rel, self.settings.deploy_canary_percent), self.previous)
        url = _canary_url(isvc)
        if url is None:
            raise PropensityError(
                "the InferenceService has no 'latest' tag route to check the canary on; annotate it with "
                "serving.kserve.io/enable-tag-routing: 'true'"
            )
        return url

    def finish(self) -> None:
        current = self._get()
        spec = copy.deepcopy(current["spec"])
        spec["predictor"].pop("canaryTrafficPercent", None)
        self._apply(spec, current)

    def restore(self) -> None:
        if self.previous is None:
            return
        spec = copy.deepcopy(self.previous["spec"])
        spec["predictor"]["canaryTrafficPercent"] = 0
        self._replace(spec, self._get())  # traffic moves back as soon as KServe sees it: no need to wait

    def pin(self, rel: Release) -> str | None:
        current = self._get()
        isvc = self._apply(_pinned(current["spec"], rel, None), current)
        url = _canary_url(isvc) or (isvc.get("status") or {}).get("url")  # the revision just made, all traffic
        return str(url) if url else None


def rollout_for(settings: Settings) -> Rollout:
    if settings.deploy_target == "kubernetes":
        return InferenceServiceRollout(settings)
    return LocalServer(settings)


def _mark_rolled_back(settings: Settings, rel: Release, value: bool) -> None:
    configure(settings)
    client = MlflowClient()
    if value:
        client.set_model_version_tag(settings.model_name, rel.batch.version, ROLLED_BACK_TAG, "true")
    else:
        client.delete_model_version_tag(settings.model_name, rel.batch.version, ROLLED_BACK_TAG)


def _previous_release(settings: Settings, history: list[Deployment], rel: Release) -> Release | None:
    stack = [v for v in deployed_stack(history) if v != rel.batch.version]
    return release(settings, stack[-1]) if stack else None


def deploy(settings: Settings, version: str, rollout: Rollout | None = None) -> Deployment:
    """Promote release `version` and roll it out; keep it if the smoke requests pass, else roll back."""
    rel = release(settings, version)  # validates the version before anything moves
    previous = _previous_release(settings, read_deployments(settings), rel)
    if previous is None:  # nothing deployed through this step yet: go back to the champion of now
        champion = release_at(settings, CHAMPION)
        if champion is not None and champion.batch.version != rel.batch.version:
            previous = champion
    rollout = rollout or rollout_for(settings)
    promote(settings, rel.batch.version, rel.realtime.version)
    try:
        url = rollout.start(rel)
        result = smoke(url, rel, settings.deploy_smoke_requests) if url else None
        problem = result.problem(settings) if result else None
    except Exception as error:  # the API or the server failed us: the release is not proven, undo it
        result, problem = None, str(error) if isinstance(error, PropensityError) else f"{type(error).__name__}: {error}"
    if problem is not None:
        # The registry first: batch scoring and local servers follow the aliases.
        if previous is not None:
            promote(settings, previous.batch.version, previous.realtime.version)
        _mark_rolled_back(settings, rel, True)
        back_to = f"v{previous.batch.version}" if previous else "nothing (no earlier deployment)"
        try:
            rollout.restore()
        except Exception as error:
            problem += f"; restoring the previous spec failed too: {error}"
        _record(settings, rel, ROLLED_BACK, problem)
        raise PropensityError(f"v{rel.batch.version} was rolled back to {back_to}: {problem}")
    rollout.finish()
    _mark_rolled_back(settings, rel, False)
    if result is None:
        detail = "no server running: the champion moved, a server started now serves it"
    else:
        detail = f"{result.requests} smoke requests, {result.errors} failed, p95 {result.p95_ms:.0f} ms"
    return _record(settings, rel, DEPLOYED, detail)


def rollback(settings: Settings, rollout: Rollout | None = None) -> Deployment:
    """Go back to the release deployed before the current one: all traffic at once (it served before)."""
    history = read_deployments(settings)
    stack = deployed_stack(history)
    if len(stack) < 2:
        raise PropensityError("nothing to roll back to: fewer than two releases were deployed")
    current, previous = release(settings, stack[-1]), release(settings, stack[-2])
    rollout = rollout or rollout_for(settings)
    promote(settings, previous.batch.version, previous.realtime.version)
    _mark_rolled_back(settings, current, True)
    url = rollout.pin(previous)
    detail = f"back to v{previous.batch.version}"
    problem = None
    if url:
        result = smoke(url, previous, settings.deploy_smoke_requests)
        detail += f"; {result.requests} smoke requests, {result.errors} failed, p95 {result.p95_ms:.0f} ms"
        problem = result.problem(settings)
    event = _record(settings, current, ROLLED_BACK, detail)
    if problem:
        raise PropensityError(f"rolled back to v{previous.batch.version}, but it fails its smoke requests: {problem}")
    return event
