"""Feast objects of the propensity project.

They are built by a function rather than at module level because their sources come from the
settings (the Iceberg catalog and the lake's location); `feature_store()` applies them. Feast's
Spark offline store reads every source: point-in-time joins run in Spark, over the feature table
through its Iceberg catalog.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
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
class Sources:
    """Where each view's offline rows live: tables written by Spark, not by Feast."""

    activity: str  # the offline feature table (Iceberg, partitioned by snapshot date), as Spark names it
    profile: str  # the lake's customers table (Iceberg)
    score: str  # the latest scores table (Iceberg); scores reach the online store by push


# Feast warns that its Spark source and store are experimental on every construction, which includes
# every read of the registry (in the predictor too): said once here instead (docs/decisions.md, Tables).
warnings.filterwarnings("ignore", r"The spark (data source API|offline store) is an experimental", RuntimeWarning)


def _spark_source(name: str, table: str, timestamp_field: str) -> SparkSource:
    """A view's offline rows: a table of our catalog, read by Feast's Spark offline store (Feast
    touches it only to read, and the score view's never: its rows arrive by push)."""
    return SparkSource(name=name, table=table, timestamp_field=timestamp_field)


def build_repo(sources: Sources, snapshot_every_days: int) -> FeatureRepo:
    customer = Entity(name="customer", join_keys=[ENTITY], value_type=ValueType.STRING, description="A shopper")
    where: dict[str, tuple[str, str]] = {
        ACTIVITY_VIEW: (sources.activity, EVENT_TIMESTAMP),
        PROFILE_VIEW: (sources.profile, "signup_date"),
        SCORE_VIEW: (sources.score, EVENT_TIMESTAMP),
    }

    def view(name: str, ttl: timedelta, schema: list[Field], description: str) -> FeatureView:
        source = _spark_source(name, *where[name])
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
