"""A Kubernetes API server on 127.0.0.1 for one InferenceService, with a stand-in for KServe's controller,
to test the deploy step's client side with the real `kubernetes` client.

It answers the calls the deploy step makes (GET and PUT of the InferenceService), like the API server:
a PUT must carry the resourceVersion last read (else 409), bumps `metadata.generation` and is checked
against the pinned CRD schema when one is on this machine. The controller part fills `status` as
KServe does in Serverless mode once the new revision is ready: a new revision per spec change,
`canaryTrafficPercent` splitting traffic between it and the last rolled-out revision, and tag routes
(`latest`, `prev`) whose URL is `<canary_url>/<revision>` (a stand-in predictor that can tell which
revision a request was routed to; `pins` says which model version each revision pins).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.http_stub import json_server

PATH = "/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices/{name}"


@dataclass
class KubeApi:
    isvc: dict[str, Any]
    canary_url: str
    url: str = ""
    # The controller makes a new revision ready after this many reads (None: never); before that the
    # status already names the new generation for `stale_reads` reads (KServe updates the status
    # before Knative has made the revision).
    ready_after_reads: int | None = 1
    stale_reads: int = 0
    validate: Callable[[dict[str, Any]], list[str]] | None = None
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    pins: dict[str, str | None] = field(default_factory=dict)  # revision -> PROPENSITY_SERVING_MODEL_VERSION
    puts: list[dict[str, Any]] = field(default_factory=list)
    _reads_since_put: int = 0
    _revisions: int = 0
    _rolled_out: str | None = None
    _template: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        meta = self.isvc.setdefault("metadata", {})
        meta.setdefault("namespace", "propensity")
        meta.update(generation=1, resourceVersion="1")
        self._reconcile()  # the object as applied from the manifests: one ready revision

    @property
    def path(self) -> str:
        meta = self.isvc["metadata"]
        return PATH.format(namespace=meta["namespace"], name=meta["name"])

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append((method, path, body))
            if path != self.path:
                return 404, status(404, "NotFound", f"{path} not found")
            if method == "GET":
                self._reads_since_put += 1
                if self._reads_since_put <= self.stale_reads:
                    self.isvc["status"]["observedGeneration"] = self.isvc["metadata"]["generation"]
                elif self.ready_after_reads is not None and self._reads_since_put >= self.ready_after_reads:
                    self._reconcile()
                return 200, copy.deepcopy(self.isvc)
            if method == "PUT":
                return self._put(body)
            return 405, status(405, "MethodNotAllowed", method)

    def _put(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = self.isvc["metadata"]
        if body.get("metadata", {}).get("resourceVersion") != meta["resourceVersion"]:
            return 409, status(409, "Conflict", "the object has been modified; please apply your changes again")
        errors = self.validate(body) if self.validate else []
        if errors:
            return 422, status(422, "Invalid", "; ".join(errors))
        self.puts.append(copy.deepcopy(body))
        changed = body["spec"] != self.isvc["spec"]
        self.isvc = {**copy.deepcopy(body), "status": self.isvc.get("status", {})}
        generation = meta["generation"] + (1 if changed else 0)
        self.isvc["metadata"].update(generation=generation, resourceVersion=str(int(meta["resourceVersion"]) + 1))
        self._reads_since_put = 0
        return 200, copy.deepcopy(self.isvc)

    def _reconcile(self) -> None:
        """What KServe and Knative do with the current spec once its revision is ready."""
        meta, status_ = self.isvc["metadata"], self.isvc.setdefault("status", {})
        name = meta["name"]
        predictor = self.isvc["spec"]["predictor"]
        template = {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
        if template != self._template:  # Knative: a new revision only when the pod template changes
            self._template = copy.deepcopy(template)
            self._revisions += 1
            env = predictor["containers"][0].get("env") or []
            pin = next((e.get("value") for e in env if e["name"] == "PROPENSITY_SERVING_MODEL_VERSION"), None)
            self.pins[f"{name}-predictor-{self._revisions:05d}"] = pin
        latest = f"{name}-predictor-{self._revisions:05d}"
        canary = predictor.get("canaryTrafficPercent")
        routes = [
            {"tag": "latest", "revisionName": latest, "latestRevision": True, "url": f"{self.canary_url}/{latest}"}
        ]
        if canary is None or self._rolled_out is None:
            routes[0]["percent"] = 100
            self._rolled_out = latest
        else:
            routes[0]["percent"] = canary
            routes.append(
                {"tag": "prev", "revisionName": self._rolled_out, "latestRevision": False, "percent": 100 - canary}
            )
        status_.update(
            observedGeneration=meta["generation"],
            conditions=[{"type": "Ready", "status": "True"}],
            url=f"http://{name}.{meta['namespace']}.example.com",
            components={
                "predictor": {
                    "latestCreatedRevision": latest,
                    "latestReadyRevision": latest,
                    "latestRolledoutRevision": self._rolled_out,
                    "traffic": routes,
                }
            },
        )


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


@contextmanager
def serving(api: KubeApi) -> Iterator[KubeApi]:
    def answer(handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, dict[str, Any]]:
        return api.handle(handler.command, handler.path.split("?", 1)[0], json.loads(raw or b"{}"))

    with json_server(answer) as url:
        api.url = url
        yield api
