"""Request contract and lookup-or-fallback logic, without a server."""

from datetime import UTC, date, datetime, timedelta

import pytest

from propensity import features as F
from serving.predictor import is_fresh, realtime_features
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


def test_extra_request_context_is_accepted() -> None:
    [instance] = parse_instances({"instances": [{"customer_id": " c-1 ", "device": "ios"}]})
    assert instance.customer_id == "c-1"


def test_freshness() -> None:
    max_age = timedelta(hours=36)
    assert is_fresh((NOW - timedelta(hours=1)).isoformat(), NOW, max_age)
    assert not is_fresh((NOW - timedelta(hours=40)).isoformat(), NOW, max_age)
    assert not is_fresh(None, NOW, max_age)
    assert not is_fresh("garbage", NOW, max_age)


def test_request_context_fills_what_feast_does_not_know() -> None:
    online = {name: [None, None] for name in F.ACTIVITY_FEATURES + F.PROFILE_FEATURES}
    online["country"] = ["FR", None]
    online["tenure_days"] = [100.0, None]
    instances = [
        Instance(customer_id="known", country="DE"),
        Instance(customer_id="new", channel="app", signup_date=date(2025, 12, 22)),
    ]
    frame = realtime_features(instances, online, NOW)
    assert frame.loc[0, "country"] == "DE"  # request-time context wins
    assert frame.loc[1, "channel"] == "app" and frame.loc[1, "country"] == "unknown"
    assert frame.loc[1, "tenure_days"] == 10.0 and frame.loc[0, "tenure_days"] == 100.0
    assert frame.loc[1, "days_since_last_order"] == F.NO_ORDER_DAYS
