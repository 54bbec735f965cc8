"""Feast objects of the propensity project.

They are built by a function rather than at module level because source paths come from the
settings (a work directory locally, object storage on the cluster); `feature_store()` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

from propensity.features import ENTITY, EVENT_TIMESTAMP, SNAPSHOT_FEATURES

ACTIVITY_VIEW = "customer_activity"
PROFILE_VIEW = "customer_profile"
SCORE_VIEW = "customer_score"
TRAINING_SERVICE = "propensity_training"
ONLINE_SERVICE = "propensity_online"

_INT_FEATURES = {"orders_total", "orders_30d", "orders_90d", "orders_prev_90d"}


@dataclass(frozen=True)
class FeatureRepo:
    customer: Entity
    activity: FeatureView
    profile: FeatureView
    score: FeatureView
    training_service: FeatureService
    online_service: FeatureService

    @property
    def objects(self) -> list[object]:
        return [
            self.customer,
            self.activity,
            self.profile,
            self.score,
            self.training_service,
            self.online_service,
        ]


@dataclass(frozen=True)
class SourcePaths:
    """Where each view's offline rows live: tables written by Spark, not by Feast."""

    activity: Path  # the offline feature table, partitioned by snapshot date
    profile: Path  # the current version of the lake's customers table
    score: Path  # an empty file: scores reach the online store by push only


def build_repo(paths: SourcePaths, snapshot_every_days: int) -> FeatureRepo:
    customer = Entity(name="customer", join_keys=[ENTITY], value_type=ValueType.STRING, description="A shopper")
    sources = {
        ACTIVITY_VIEW: (paths.activity, EVENT_TIMESTAMP),
        PROFILE_VIEW: (paths.profile, "signup_date"),
        SCORE_VIEW: (paths.score, EVENT_TIMESTAMP),
    }

    def view(name: str, ttl: timedelta, schema: list[Field], description: str) -> FeatureView:
        path, timestamp_field = sources[name]
        source = FileSource(name=name, path=str(path), timestamp_field=timestamp_field)
        return FeatureView(
            name=name, entities=[customer], ttl=ttl, schema=schema, source=source, online=True, description=description
        )

    activity = view(
        ACTIVITY_VIEW,
        # A snapshot is valid until the next one; older rows must not leak into later training rows.
        timedelta(days=snapshot_every_days),
        [Field(name=f, dtype=Int64 if f in _INT_FEATURES else Float64) for f in SNAPSHOT_FEATURES],
        "Purchase behaviour before each snapshot date, and where in the year the date is",
    )
    profile = view(
        PROFILE_VIEW,
        timedelta(0),  # a profile never expires
        [Field(name="country", dtype=String), Field(name="channel", dtype=String)],
        "Who the customer is: country and acquisition channel",
    )
    score = view(
        SCORE_VIEW,
        timedelta(0),
        [
            Field(name="score", dtype=Float64),
            Field(name="model_version", dtype=String),
            Field(name="scored_at", dtype=String),
        ],
        "Latest nightly batch score, pushed after each batch-scoring run",
    )
    training_service = FeatureService(name=TRAINING_SERVICE, features=[activity, profile])
    online_service = FeatureService(name=ONLINE_SERVICE, features=[activity, profile, score])
    return FeatureRepo(customer, activity, profile, score, training_service, online_service)
