"""A small Kubeflow Pipelines v2beta1 REST API on 127.0.0.1, for testing our client side with the real
`kfp.Client`: the calls `submit` and `schedule` make (healthz, experiments, runs, recurring runs),
kept in memory, with every request recorded (method, path, query, headers, body)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.http_stub import json_server

PREFIX = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class KfpApi:
    url: str = ""
    multi_user: bool = False
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Answer every call with this HTTP status instead (a backend that refuses us).
    fail_with: int | None = None
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        self.requests.append(request)
        if self.fail_with is not None:
            return self.fail_with, {"error": "denied by the test", "code": 7, "message": "denied by the test"}
        route = request.path.removeprefix(PREFIX)
        if (request.method, route) == ("GET", "/healthz"):
            return 200, {"multi_user": self.multi_user}
        if route == "/experiments":
            return self.experiments_call(request)
        if (request.method, route) == ("POST", "/runs"):
            created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            run = {**request.body, "run_id": self.new_id("run"), "state": "PENDING", "created_at": created}
            self.runs[run["run_id"]] = run
            return 200, run
        if (request.method, route) == ("GET", "/runs"):
            return 200, self.list_runs(request)
        if route == "/recurringruns":
            if request.method == "POST":
                recurring = {**request.body, "recurring_run_id": self.new_id("rr"), "status": "ENABLED"}
                self.recurring_runs[recurring["recurring_run_id"]] = recurring
                return 200, recurring
            listed = [
                r
                for r in self.recurring_runs.values()
                if r.get("experiment_id") == request.query.get("experiment_id", r.get("experiment_id"))
            ]
            return 200, {"recurringRuns": listed, "total_size": len(listed)} if listed else {}
        if request.method == "DELETE" and route.startswith("/recurringruns/"):
            self.recurring_runs.pop(route.rsplit("/", 1)[1])
            return 200, {}
        return 404, {"error": f"not implemented by the test server: {request.method} {request.path}"}

    def list_runs(self, request: Request) -> dict[str, Any]:
        predicates = json.loads(request.query.get("filter") or "{}").get("predicates", [])
        names = {p.get("string_value") or p.get("stringValue") for p in predicates if p["key"] == "display_name"}
        runs = [
            r
            for r in self.runs.values()
            if r.get("experiment_id") == request.query.get("experiment_id", r.get("experiment_id"))
            and (not names or r["display_name"] in names)
        ]
        runs.sort(key=lambda r: r["created_at"], reverse=True)
        runs = runs[: int(request.query.get("page_size") or 20)]
        return {"runs": runs, "total_size": len(runs)} if runs else {}

    def experiments_call(self, request: Request) -> tuple[int, dict[str, Any]]:
        namespace = request.query.get("namespace") or ""
        if request.method == "POST":
            experiment = {**request.body, "experiment_id": self.new_id("exp"), "storage_state": "AVAILABLE"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        predicates = json.loads(request.query.get("filter") or "{}").get("predicates", [])
        names = {
            p.get("string_value") or p.get("stringValue") for p in predicates if p["key"] in ("display_name", "name")
        }
        found = [
            e
            for e in self.experiments.values()
            if (not names or e["display_name"] in names) and (e.get("namespace") or "") == namespace
        ]
        return 200, ({"experiments": found, "total_size": len(found)} if found else {})


@contextmanager
def kfp_api_server() -> Iterator[KfpApi]:
    api = KfpApi()

    def answer(handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, dict[str, Any]]:
        url = urlparse(handler.path)
        return api.handle(
            Request(
                method=handler.command,
                path=url.path,
                query={k: v[-1] for k, v in parse_qs(url.query).items()},
                headers={k.lower(): v for k, v in handler.headers.items()},
                body=json.loads(raw) if raw else {},
            )
        )

    with json_server(answer) as url:
        api.url = url
        yield api
