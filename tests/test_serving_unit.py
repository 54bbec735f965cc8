"""Request contract and lookup-or-fallback logic, without a server."""

from datetime import UTC, date, datetime, timedelta

import pytest

from propensity import features as F
from serving.predictor import is_fresh, realtime_columns
from serving.schema import Instance, RequestError, parse_instances

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "JSON object"),
        ({}, "instances"),
        ({"instances": []}, "instances"),
        ({"instances": [{"country": "DE"}]}, "customer_id"),
        ({"instances": [{"customer_id": ""}]}, "customer_id"),
        ({"instances": [{"customer_id": "c-1", "signup_date": "yesterday"}]}, "signup_date"),
    ],
)
def test_malformed_requests_name_the_problem(payload: object, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_instances(payload)


def test_only_declared_fields_are_accepted() -> None:
    [instance] = parse_instances({"instances": [{"customer_id": " c-1 ", "country": "DE"}]})
    assert instance.customer_id == "c-1"
    with pytest.raises(RequestError, match="device"):
        parse_instances({"instances": [{"customer_id": "c-1", "device": "ios"}]})


def test_names_the_client_sent_are_quoted_on_one_line() -> None:
    """A field or V2 input named with a newline (as the HTTP fuzz sent) is shown escaped: the 400's
    message stays one line."""
    from kserve.protocol.infer_type import InferInput, InferRequest

    from serving.schema import parse_v2

    with pytest.raises(RequestError) as extra:
        parse_instances({"instances": [{"customer_id": "c-1", "de\nvice": "ios"}]})
    tensor = InferInput(name="\n\x11odd", shape=[1], datatype="BYTES", data=[b"x"])
    with pytest.raises(RequestError) as unknown:
        parse_v2(InferRequest(model_name="propensity", infer_inputs=[tensor]))
    for message in (str(extra.value), str(unknown.value)):
        assert "\n" not in message and "\\n" in message, message


def test_freshness() -> None:
    max_age = timedelta(hours=36)
    assert is_fresh((NOW - timedelta(hours=1)).isoformat(), NOW, max_age)
    assert not is_fresh((NOW - timedelta(hours=40)).isoformat(), NOW, max_age)
    assert not is_fresh(None, NOW, max_age)
    assert not is_fresh("garbage", NOW, max_age)
    # The scoring job's clock a little ahead of ours: still fresh. Far ahead: nonsense, not fresh.
    assert is_fresh((NOW + timedelta(minutes=5)).isoformat(), NOW, max_age)
    assert not is_fresh((NOW + timedelta(days=30)).isoformat(), NOW, max_age)


def test_request_context_fills_what_feast_does_not_know() -> None:
    online: dict[str, list[object]] = {name: [None, None, None] for name in F.ACTIVITY_FEATURES + F.PROFILE_FEATURES}
    online["country"] = ["FR", None, "US"]
    online["tenure_days"] = [100.0, None, 5.0]
    instances = [
        Instance(customer_id="known", country="DE"),
        Instance(customer_id="new", channel="app", signup_date=date(2025, 12, 22)),
        Instance(customer_id="fresh"),
    ]
    columns = realtime_columns(instances, online, [0, 1], NOW.date())
    assert set(columns) == set(F.REALTIME_MODEL_FEATURES)
    assert columns["country"] == ["DE", None]  # request-time context wins; unknown stays None
    assert columns["channel"] == [None, "app"]
    assert columns["tenure_days"] == [100.0, 10.0]  # from the signup date when Feast has none
    assert columns["orders_total"] == [None, None]  # filled by the runtime, as in training
