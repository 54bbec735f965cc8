"""The deploy step on Kubernetes: the real `kubernetes` client against a local API server holding the
production overlay's InferenceService (checked against the KServe CRD on every update), and a stand-in
predictor behind the canary's tag route that answers well, fails, answers with the wrong version or
is slow. Promotion, each automatic rollback, the manual rollback and bad input.

The local target (a real `propensity serve` swapping models under load) is in test_serving_http.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client
from mlflow import MlflowClient

from components.deploy import (
    DEPLOYED,
    ROLLED_BACK,
    VERSION_ENV,
    InferenceServiceRollout,
    deploy,
    deployed_stack,
    read_deployments,
    rollback,
)
from propensity.cli import main
from propensity.errors import PropensityError
from propensity.ports import free_port
from propensity.settings import Settings
from propensity.tracking import CHAMPION, REALTIME_VERSION_TAG, ROLLED_BACK_TAG, alias_version, configure
from tests import kube_api
from tests.http_stub import json_server
from tests.test_manifests import CRD_DIR, render, schema_errors, the


def register_releases(settings: Settings, count: int) -> None:
    """`count` releases: batch version N paired with real-time version N + 10 (versions differ on purpose)."""
    configure(settings)
    mlflow = MlflowClient()
    mlflow.create_registered_model(settings.model_name)
    mlflow.create_registered_model(settings.realtime_model_name)
    for _ in range(10):  # real-time versions 1..10 belong to no release
        mlflow.create_model_version(settings.realtime_model_name, "file:///nowhere")
    for _ in range(count):
        batch = mlflow.create_model_version(settings.model_name, "file:///nowhere")
        realtime = mlflow.create_model_version(settings.realtime_model_name, "file:///nowhere")
        mlflow.set_model_version_tag(settings.model_name, batch.version, REALTIME_VERSION_TAG, realtime.version)


@dataclass
class Predictor:
    """Stands in for the predictor's revisions: a request to `/<revision>/...` is answered with the
    real-time version of the release that revision pins (batch N -> real-time N + 10), unless the
    test makes it misbehave (another `version`, a `status`, a `delay`)."""

    version: str | None = None
    status: int = 200
    delay: float = 0.0
    url: str = ""
    requests: int = 0
    pins: dict[str, str | None] = field(default_factory=dict)

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        time.sleep(self.delay)
        if self.status != 200:
            return self.status, {"error": "broken on purpose"}
        pin = self.pins.get(path.strip("/").split("/", 1)[0])
        version = self.version or (str(int(pin) + 10) if pin else "the champion at start")
        prediction = {"customer_id": "x", "score": 0.5, "source": "realtime", "model": "propensity-realtime"}
        return 200, {"predictions": [{**prediction, "model_version": version}]}


@pytest.fixture
def predictor() -> Iterator[Predictor]:
    stand_in = Predictor()
    with json_server(lambda handler, _: stand_in.answer(handler.path)) as url:
        stand_in.url = url
        yield stand_in


@pytest.fixture
def cluster(settings: Settings, predictor: Predictor) -> Iterator[kube_api.KubeApi]:
    isvc = the(render("production"), "InferenceService", "propensity")
    # Every update is checked against the KServe CRD, as the API server would (when the schemas are here).
    api = kube_api.KubeApi(isvc, canary_url=predictor.url, validate=schema_errors if CRD_DIR else None)
    predictor.pins = api.pins
    with kube_api.serving(api):
        yield api


@pytest.fixture
def k8s(settings: Settings, cluster: kube_api.KubeApi) -> Settings:
    register_releases(settings, 3)
    return settings.model_copy(
        update={"deploy_target": "kubernetes", "deploy_namespace": "propensity", "deploy_timeout_seconds": 5.0}
    )


def rollout(settings: Settings, cluster: kube_api.KubeApi) -> InferenceServiceRollout:
    api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=cluster.url)))
    return InferenceServiceRollout(settings, api=api, poll_seconds=0.05)


def pinned_version(spec: dict[str, Any]) -> str | None:
    env = spec["predictor"]["containers"][0].get("env", [])
    return next((e["value"] for e in env if e["name"] == VERSION_ENV), None)


def champions(settings: Settings) -> tuple[str | None, str | None]:
    refs = (alias_version(settings, name, CHAMPION) for name in (settings.model_name, settings.realtime_model_name))
    return tuple(ref.version if ref else None for ref in refs)  # type: ignore[return-value]


def deploy_ok(settings: Settings, cluster: kube_api.KubeApi, version: str) -> None:
    assert deploy(settings, version, rollout(settings, cluster)).outcome == DEPLOYED


def test_a_release_goes_out_as_a_canary_and_is_promoted(
    k8s: Settings, cluster: kube_api.KubeApi, predictor: Predictor
) -> None:
    event = deploy(k8s, "1", rollout(k8s, cluster))
    assert event.outcome == DEPLOYED and (event.batch_version, event.realtime_version) == ("1", "11")
    canary, promoted = cluster.puts
    # The canary: the release pinned in the predictor's environment, a share of traffic.
    assert pinned_version(canary["spec"]) == "1" and canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    # Promoted: the same spec with all traffic.
    assert pinned_version(promoted["spec"]) == "1" and "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert predictor.requests == k8s.deploy_smoke_requests
    assert champions(k8s) == ("1", "11")
    assert [d.outcome for d in read_deployments(k8s)] == [DEPLOYED]


@pytest.mark.parametrize(
    ("misbehaviour", "message"),
    [
        ({"status": 500}, "smoke requests failed"),
        ({"version": "11"}, "answered by propensity-realtime v11, not v12"),  # traffic reaches the old revision
        ({"delay": 0.05}, "p95 latency"),
    ],
)
@pytest.mark.slow
def test_a_canary_that_fails_its_smoke_requests_is_rolled_back(
    k8s: Settings, cluster: kube_api.KubeApi, predictor: Predictor, misbehaviour: dict[str, Any], message: str
) -> None:
    deploy_ok(k8s, cluster, "1")
    before = cluster.isvc["spec"]
    for key, value in misbehaviour.items():
        setattr(predictor, key, value)
    strict = k8s.model_copy(update={"deploy_max_p95_ms": 20.0})
    with pytest.raises(PropensityError, match=rf"v2 was rolled back to v1: .*{message}"):
        deploy(strict, "2", rollout(strict, cluster))
    restored = cluster.puts[-1]["spec"]
    # The previous spec is back, with all traffic on the last rolled-out revision.
    assert pinned_version(restored) == "1" and restored["predictor"]["canaryTrafficPercent"] == 0
    assert {**restored["predictor"], "canaryTrafficPercent": None} == {
        **before["predictor"],
        "canaryTrafficPercent": None,
    }
    # Both aliases back on the previous release; the rolled-back batch version's scores are refused.
    assert champions(k8s) == ("1", "11")
    tags = MlflowClient().get_model_version(k8s.model_name, "2").tags
    assert tags.get(ROLLED_BACK_TAG) == "true"
    assert [d.outcome for d in read_deployments(k8s)] == [DEPLOYED, ROLLED_BACK]
    assert deployed_stack(read_deployments(k8s)) == ["1"]


def test_a_canary_that_never_gets_ready_is_rolled_back(
    k8s: Settings, cluster: kube_api.KubeApi, predictor: Predictor
) -> None:
    deploy_ok(k8s, cluster, "1")
    cluster.ready_after_reads = None  # the new revision never becomes ready (image pull, crash loop...)
    impatient = k8s.model_copy(update={"deploy_timeout_seconds": 0.5})
    with pytest.raises(PropensityError, match=r"v2 was rolled back to v1: .*not ready within"):
        deploy(impatient, "2", rollout(impatient, cluster))
    assert pinned_version(cluster.puts[-1]["spec"]) == "1" and champions(k8s) == ("1", "11")


def test_the_canary_is_checked_only_once_its_own_revision_is_ready(
    k8s: Settings, cluster: kube_api.KubeApi, predictor: Predictor
) -> None:
    """KServe can report the new generation while its newest revision is still the old one; smoke
    requests sent then would reach the old model. The step waits for a revision of its own."""
    deploy_ok(k8s, cluster, "1")
    cluster.stale_reads = 3
    deploy_ok(k8s, cluster, "2")
    assert champions(k8s) == ("2", "12")


def test_manual_rollback_goes_back_one_release_at_a_time(
    k8s: Settings, cluster: kube_api.KubeApi, predictor: Predictor
) -> None:
    for version in ("1", "2", "3"):
        deploy_ok(k8s, cluster, version)
    event = rollback(k8s, rollout(k8s, cluster))
    assert (event.batch_version, event.outcome) == ("3", ROLLED_BACK)
    spec = cluster.puts[-1]["spec"]
    assert pinned_version(spec) == "2" and "canaryTrafficPercent" not in spec["predictor"]  # all traffic at once
    assert champions(k8s) == ("2", "12")
    assert MlflowClient().get_model_version(k8s.model_name, "3").tags.get(ROLLED_BACK_TAG) == "true"
    rollback(k8s, rollout(k8s, cluster))
    assert champions(k8s) == ("1", "11")
    with pytest.raises(PropensityError, match="nothing to roll back to"):
        rollback(k8s, rollout(k8s, cluster))
    # Deploying a rolled-back release again on purpose makes its scores acceptable again.
    deploy_ok(k8s, cluster, "3")
    assert ROLLED_BACK_TAG not in MlflowClient().get_model_version(k8s.model_name, "3").tags
    assert deployed_stack(read_deployments(k8s)) == ["1", "3"]


def test_an_update_that_races_another_writer_fails_instead_of_overwriting(
    k8s: Settings, cluster: kube_api.KubeApi, predictor: Predictor
) -> None:
    """Every update carries the resourceVersion it read: the API server refuses a stale one."""
    target = rollout(k8s, cluster)
    stale = target._get()
    cluster.isvc["metadata"]["resourceVersion"] = "99"  # someone applied meanwhile
    with pytest.raises(PropensityError, match="HTTP 409"):
        target._call("update", target.api.replace_namespaced_custom_object, stale)


def test_a_version_that_is_not_a_release_changes_nothing(k8s: Settings, cluster: kube_api.KubeApi) -> None:
    with pytest.raises(PropensityError, match="has no version 9"):
        deploy(k8s, "9", rollout(k8s, cluster))
    configure(k8s)
    mlflow = MlflowClient()
    mlflow.create_model_version(k8s.model_name, "file:///nowhere")  # version 4, registered by hand
    with pytest.raises(PropensityError, match="names no real-time model"):
        deploy(k8s, "4", rollout(k8s, cluster))
    assert cluster.puts == [] and champions(k8s) == (None, None) and read_deployments(k8s) == []


def test_cli_deploy_and_rollback_fail_with_one_line(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["deploy", "--version", "two"])
    assert exited.value.code == 2 and "positive whole number" in capsys.readouterr().err
    register_releases(settings, 1)
    assert main(["deploy", "--version", "5"]) == 2
    assert "has no version 5" in capsys.readouterr().err
    assert main(["rollback"]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err


def test_cli_deploys_locally_with_no_server_running(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locally, with no server on the serving port, moving the aliases is the deployment."""
    monkeypatch.setenv("PROPENSITY_SERVING_PORT", str(free_port()))
    register_releases(settings, 2)
    assert main(["deploy", "--version", "2", "--json"]) == 0
    event = json.loads(capsys.readouterr().out)
    assert event["outcome"] == DEPLOYED and event["realtime_version"] == "12" and "no server running" in event["detail"]
    assert champions(settings) == ("2", "12")
