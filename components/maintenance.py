"""Nightly table maintenance: every table's snapshots older than the retention expire, with the
files only they referenced, and files no snapshot references (left by killed writers) are deleted.
Stale feature snapshots are deleted first: the lineage that says they are stale expires with the
commits (`propensity.feature_table.forget_stale_snapshots`)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from propensity.feature_table import FEATURE_SNAPSHOTS, forget_stale_snapshots
from propensity.lake import CUSTOMERS, TRANSACTIONS
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.tables import HISTORIC_SCORES, LATEST_SCORES, load_table, maintain_table

TABLES = (TRANSACTIONS, CUSTOMERS, FEATURE_SNAPSHOTS, HISTORIC_SCORES, LATEST_SCORES)


def maintain_tables(settings: Settings, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Maintain every table that exists; returns, per table, what was kept and removed (and, for the
    feature table, the stale snapshot dates deleted)."""
    older_than = (now or datetime.now(UTC)) - timedelta(days=settings.table_retention_days)
    present = [name for name in TABLES if load_table(settings, name) is not None]
    if not present:
        return {}
    spark = spark_session(settings, "propensity-maintenance")
    forgotten = forget_stale_snapshots(spark, settings) if FEATURE_SNAPSHOTS in present else []
    done = {name: asdict(maintain_table(spark, settings, name, older_than)) for name in present}
    if FEATURE_SNAPSHOTS in done:
        done[FEATURE_SNAPSHOTS]["stale_snapshots_deleted"] = forgotten
    return done
