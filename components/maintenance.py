"""Nightly table maintenance: every table's snapshots older than the retention expire, with the
files only they referenced, and files no snapshot references (left by killed writers) are deleted.
Stale feature snapshots are deleted first: the lineage that says they are stale expires with the
commits (`propensity.feature_table.forget_stale_snapshots`).

Maintenance is due once per `table_maintenance_interval_hours`: a backfill of many dates, or the
demo's several nights in minutes, maintains once, not after every date. When it last ran is
recorded on the storage (`state/maintenance.json`), after it succeeded."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from propensity.feature_table import FEATURE_SNAPSHOTS, forget_stale_snapshots
from propensity.lake import CUSTOMERS, TRANSACTIONS
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.storage import Storage
from propensity.tables import HISTORIC_SCORES, LATEST_SCORES, load_table, maintain_table

TABLES = (TRANSACTIONS, CUSTOMERS, FEATURE_SNAPSHOTS, HISTORIC_SCORES, LATEST_SCORES)
STATE_KEY = "state/maintenance.json"


def last_maintained(settings: Settings) -> datetime | None:
    record = Storage(settings).read_json(STATE_KEY)
    return datetime.fromisoformat(record["maintained_at"]) if record else None


def maintenance_due(settings: Settings, now: datetime) -> str | None:
    """None when maintenance is due at `now`; otherwise why not (it ran less than the interval ago).
    A record from the future (a clock set back) never holds maintenance off."""
    last = last_maintained(settings)
    interval = timedelta(hours=settings.table_maintenance_interval_hours)
    if last is None or not last <= now < last + interval:
        return None
    due = (last + interval).isoformat(timespec="seconds")
    return f"maintained at {last.isoformat(timespec='seconds')}; next due from {due}"


def maintain_tables(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """Maintain every table that exists, when maintenance is due. Returns `tables`: per table what
    was kept and removed (and, for the feature table, the stale snapshot dates deleted); or
    `skipped`: why nothing was done."""
    now = now or datetime.now(UTC)
    if reason := maintenance_due(settings, now):
        return {"skipped": reason, "tables": {}}
    older_than = now - timedelta(days=settings.table_retention_days)
    present = [name for name in TABLES if load_table(settings, name) is not None]
    done: dict[str, dict[str, Any]] = {}
    if present:
        spark = spark_session(settings, "propensity-maintenance")
        forgotten = forget_stale_snapshots(spark, settings) if FEATURE_SNAPSHOTS in present else []
        done = {name: asdict(maintain_table(spark, settings, name, older_than)) for name in present}
        if FEATURE_SNAPSHOTS in done:
            done[FEATURE_SNAPSHOTS]["stale_snapshots_deleted"] = forgotten
        Storage(settings).write_json(STATE_KEY, {"maintained_at": now.isoformat()})
    return {"tables": done}
