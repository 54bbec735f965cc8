"""The whole loop on small data through the demo's code path, then HTTP checks on a real server.

One module-scoped run of `run_demo` (the same function `propensity demo` calls) with a few thousand
customers; every assertion below reads what that run measured or wrote.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pandas as pd
import pytest

from components.deploy import DEPLOYED, read_deployments
from monitoring.outcomes import CHECKS
from monitoring.trigger import read_history
from propensity.demo import SUMMARY_KEY, DemoOptions, run_demo, running_server
from propensity.ports import free_port
from propensity.settings import Settings, get_settings
from propensity.storage import Storage
from propensity.tables import HISTORIC_SCORES, LATEST_SCORES
from propensity.tracking import CHAMPION, alias_version
from serving.inference_log import read_records
from tests.test_batch_scoring import table_frame
from tests.test_ingest import lake_customers, lake_transactions

# The whole demo runs in the module fixture, more than the default timeout: 16 minutes alone on 2
# cores, 44 beside the system test in CI (2026-12-04), and half as long again on a slow day; the
# limit is CI's own 90 minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(5400)]


def read_latest_scores(settings: Settings) -> pd.DataFrame:
    return table_frame(settings, LATEST_SCORES)


def read_historic_scores(settings: Settings) -> pd.DataFrame:
    return table_frame(settings, HISTORIC_SCORES).astype({"score_date": str})


def last_scoring(summary: dict[str, Any]) -> dict[str, Any]:
    """The scoring run the latest table is from: the rescoring, or the second night's."""
    return summary["batch_scoring_after_retraining"] or summary["batch_scoring_nights"][-1]


# Exactly what `make demo` runs (`propensity demo` with its defaults): the decisions asserted here
# are the ones a newcomer sees.
OPTIONS = DemoOptions()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROPENSITY_HOME", str(tmp_path_factory.mktemp("demo") / "home"))
        settings = get_settings()
        summary = run_demo(settings, OPTIONS)
    return settings, summary


def test_summary_file_has_the_promised_figures(demo: tuple[Settings, dict[str, Any]]) -> None:
    settings, summary = demo
    written = Storage(settings).read_json(SUMMARY_KEY)
    assert written == json.loads(json.dumps(summary, default=str))
    for section, key in [
        ("training", "model_version"),
        ("training", "auc"),
        ("training", "decision"),
        ("batch_scoring", "rows_scored"),
        ("batch_scoring", "latest_rows"),
        ("serving", "requests"),
        ("serving", "batch_hits"),
        ("serving", "realtime_hits"),
        ("serving", "errors"),
        ("monitoring", "drift_detected"),
        ("monitoring", "retrain_triggered"),
        ("retraining", "model_version"),
        ("retraining", "decision"),
    ]:
        assert written[section][key] is not None, f"{section}.{key}"
    assert written["champion_version"] is not None


def test_first_training_promotes_a_useful_model(demo: tuple[Settings, dict[str, Any]]) -> None:
    _, summary = demo
    assert summary["training"]["decision"] == "promote"
    assert summary["training"]["auc"] > 0.65


def test_every_known_customer_scored_exactly_once(demo: tuple[Settings, dict[str, Any]]) -> None:
    settings, summary = demo
    historic = read_historic_scores(settings)
    assert historic["score_date"].nunique() == 3  # the first date and the two nights after new data
    for score_date, rows in historic.groupby("score_date"):
        assert rows["customer_id"].is_unique, score_date
        customers, transactions = lake_customers(settings), lake_transactions(settings)
        cutoff = pd.Timestamp(str(score_date))
        active = transactions["timestamp"].between(cutoff - pd.Timedelta(days=365), cutoff, inclusive="left")
        known = set(transactions.loc[active, "customer_id"])
        known &= set(customers.loc[customers["signup_date"] < cutoff, "customer_id"])
        assert set(rows["customer_id"]) == known
    latest = read_latest_scores(settings)
    assert latest["customer_id"].is_unique
    assert len(latest) == last_scoring(summary)["latest_rows"]
    for run in (summary["batch_scoring"], *summary["batch_scoring_nights"], last_scoring(summary)):
        assert run["rows_scored"] == run["latest_rows"]
    newest = historic["score_date"].max()
    assert set(latest["customer_id"]) == set(historic.loc[historic["score_date"] == newest, "customer_id"])
    assert latest["score"].between(0, 1).all()


def test_both_serving_paths_were_used_without_errors(demo: tuple[Settings, dict[str, Any]]) -> None:
    settings, summary = demo
    serving = summary["serving"]
    assert serving["errors"] == 0 and serving["requests"] == OPTIONS.known_requests + OPTIONS.new_requests
    assert serving["batch_hits"] == OPTIONS.known_requests
    assert serving["realtime_hits"] == OPTIONS.new_requests
    assert serving["malformed_request_status"] == 400
    records = read_records(Storage(settings))
    assert serving["traffic_instances"] == min(OPTIONS.traffic_instances, summary["batch_scoring"]["latest_rows"])
    assert len(records) == serving["requests"] + serving["traffic_instances"]
    assert {r["source"] for r in records} == {"batch", "realtime"}


def test_drift_triggers_retraining_and_the_challenger_is_judged(
    demo: tuple[Settings, dict[str, Any]],
) -> None:
    settings, summary = demo
    assert summary["monitoring"]["drift_detected"] is True
    assert summary["monitoring"]["retrain_triggered"] is True
    assert summary["retraining"]["decision"] in {"promote", "reject"}
    assert int(summary["retraining"]["model_version"]) > int(summary["training"]["model_version"])
    champion = alias_version(settings, settings.model_name, CHAMPION)
    assert champion is not None and champion.version == summary["champion_version"]
    expected = (
        summary["retraining"]["model_version"]
        if summary["retraining"]["decision"] == "promote"
        else summary["training"]["model_version"]
    )
    assert summary["champion_version"] == expected
    assert last_scoring(summary)["model_version"] == expected
    # Scoring again after retraining only when it changes something: a promoted champion.
    rescored = summary["batch_scoring_after_retraining"] is not None
    assert rescored == (summary["retraining"]["decision"] == "promote"), summary["rescoring_skipped"]
    assert rescored or "scores stand" in summary["rescoring_skipped"]
    # Night one records its checks but cannot retrain alone (2 of the last 3); night two does.
    decisions = summary["monitoring"]["decisions"]
    assert [d["status"] for d in decisions] == ["not_needed", "succeeded"], decisions
    assert "of the last 3 checks" in decisions[0]["reason"] and "held in at least 2" in decisions[1]["reason"]
    assert [r.status for r in read_history(settings)] == ["not_needed", "succeeded"]
    checks = summary["monitoring"]["checks"]
    assert set(checks) == set(CHECKS) and all(len(by_date) == 2 for by_date in checks.values())
    assert all(by_date[max(by_date)]["reason"] for by_date in checks.values())
    # The nights are back-dated: each judges the inference log of the day before it, never the wall
    # clock's, so the website traffic logged while the demo runs (today) is not taken for theirs.
    for night, outcome in checks["inference_drift"].items():
        assert f"to {night} 00:00 UTC: no requests logged" in outcome["reason"], checks


def test_realised_accuracy_of_the_first_scores_once_their_labels_completed(
    demo: tuple[Settings, dict[str, Any]],
) -> None:
    """The first scoring date's 30-day labels are complete by the second night: its realised AUC is
    measured per version and segment, is a useful model's, and is plotted."""
    settings, summary = demo
    accuracy = summary["realised_accuracy"]
    assert list(accuracy["auc_by_score_date"]) == [summary["batch_scoring"]["score_date"]]
    assert 0.6 < next(iter(accuracy["auc_by_score_date"].values())) <= 1.0
    assert accuracy["points"] > 1  # "all" and the countries
    assert Storage(settings).read_bytes("monitoring/realised_accuracy.png")


def test_each_promoted_champion_was_deployed(demo: tuple[Settings, dict[str, Any]]) -> None:
    """The first champion with no server up (the aliases are the deployment); a retrained winner to
    the running server, which swapped it in and answered every smoke request."""
    settings, summary = demo
    history = read_deployments(settings)
    assert history[0].batch_version == summary["training"]["model_version"] and "no server" in history[0].detail
    if summary["retraining"]["decision"] == "promote":
        deployment = summary["deployment"]
        assert deployment["outcome"] == DEPLOYED and deployment["batch_version"] == summary["champion_version"]
        assert f"{settings.deploy_smoke_requests} smoke requests, 0 failed" in deployment["detail"]
        assert [d.outcome for d in history] == [DEPLOYED, DEPLOYED]
    else:
        assert summary["deployment"] is None and len(history) == 1


def test_rescoring_a_date_replaces_its_partition(demo: tuple[Settings, dict[str, Any]]) -> None:
    from components.batch_scoring import score_customers

    settings, _ = demo
    before = read_historic_scores(settings)
    result = score_customers(settings)  # the same date again
    after = read_historic_scores(settings)
    assert len(after) == len(before)
    assert (after["score_date"] == result.score_date).sum() == result.rows_scored
    # Backfilling the older date replaces only its partition and does not change what is live.
    live = read_latest_scores(settings)
    older = str(before["score_date"].min())
    backfill = score_customers(settings, older)
    assert backfill.score_date == older and backfill.latest_rows == len(live)
    pd.testing.assert_frame_equal(
        read_latest_scores(settings).sort_values("customer_id").reset_index(drop=True)[["customer_id", "score_date"]],
        live.sort_values("customer_id").reset_index(drop=True)[["customer_id", "score_date"]],
    )
    assert len(read_historic_scores(settings)) == len(before)


@pytest.fixture(scope="module")
def server(demo: tuple[Settings, dict[str, Any]]) -> Any:
    settings, _ = demo
    with running_server(settings, free_port()) as url:
        yield url, settings


def test_http_known_and_new_customers(server: tuple[str, Settings]) -> None:
    url, settings = server
    known = read_latest_scores(settings)["customer_id"].iloc[0]
    response = httpx.post(
        f"{url}/v1/models/propensity:predict",
        json={
            "instances": [
                {"customer_id": known},
                {"customer_id": "brand-new", "country": "DE", "channel": "app"},
            ]
        },
    )
    assert response.status_code == 200
    batch, realtime = response.json()["predictions"]
    assert batch["source"] == "batch" and realtime["source"] == "realtime"
    assert 0 <= realtime["score"] <= 1 and batch["model_version"] and realtime["model_version"]


@pytest.mark.parametrize(
    "body",
    [{"instances": [{"country": "DE"}]}, {"instances": []}, {"rows": [1]}, {"instances": "c-1"}],
)
def test_http_malformed_requests_get_400(server: tuple[str, Settings], body: dict[str, Any]) -> None:
    url, _ = server
    response = httpx.post(f"{url}/v1/models/propensity:predict", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_http_invalid_json_gets_400(server: tuple[str, Settings]) -> None:
    url, _ = server
    response = httpx.post(
        f"{url}/v1/models/propensity:predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


def test_http_v2_open_inference_protocol(server: tuple[str, Settings]) -> None:
    url, _ = server
    body = {
        "inputs": [
            {"name": "customer_id", "shape": [2], "datatype": "BYTES", "data": ["new-1", "new-2"]},
            {"name": "country", "shape": [2], "datatype": "BYTES", "data": ["FR", "US"]},
        ]
    }
    response = httpx.post(f"{url}/v2/models/propensity/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["customer_id"] == ["new-1", "new-2"] and outputs["source"] == ["realtime", "realtime"]
    bad = httpx.post(
        f"{url}/v2/models/propensity/infer",
        json={"inputs": [{"name": "country", "shape": [1], "datatype": "BYTES", "data": ["FR"]}]},
    )
    assert bad.status_code == 400


def test_health_and_readiness(server: tuple[str, Settings]) -> None:
    url, _ = server
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/models/propensity/ready").status_code == 200
