"""Batch scoring on Spark: every eligible customer exactly once, reruns replace, a failed check or a
killed run leaves the (Iceberg) tables as they were, the latest table is one commit and goes online."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from components import batch_scoring
from components.batch_scoring import latest_scores, publish_latest_scores, score_customers
from components.features import build_training_set, materialize_features
from components.registry import Decision, register_models
from components.training import train_candidates, train_realtime_model
from feature_repo.store import feature_store
from propensity import features as F
from propensity.errors import PropensityError
from propensity.feature_table import feature_snapshot
from propensity.lake import ingest, last_data_date
from propensity.settings import Settings, get_settings
from propensity.synthetic import generate
from propensity.tables import HISTORIC_SCORES, LATEST_SCORES, current_snapshot, scan_batches
from propensity.tracking import promote
from tests.gates import gated_script, release_together
from tests.test_ingest import lake_customers, lake_transactions

# Starts Spark, a pipeline run or a server: left out by `make test-fast`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored_world(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A small lake, its features, a champion fitted and promoted, and one scoring run."""
    root = tmp_path_factory.mktemp("scoring")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROPENSITY_HOME", str(root / "home"))
        settings = get_settings()
        data = generate(customers=500, days=420, seed=3)
        data.transactions.to_parquet(root / "tx.parquet", index=False)
        data.customers.to_parquet(root / "customers.parquet", index=False)
        ingest(settings, root / "tx.parquet", root / "customers.parquet")
        materialize_features(settings)
        build_training_set(settings, root / "training.parquet")
        candidate = train_candidates(settings, root / "training.parquet", [{"max_iter": 30}])[0]
        realtime = train_realtime_model(settings, root / "training.parquet")
        registered = register_models(settings, candidate.run_id, realtime, Decision.unchecked("promote", "test"))
        promote(settings, registered.batch.version, registered.realtime.version)
        score_customers(settings)
    return settings


def eligible(settings: Settings, as_of: pd.Timestamp) -> set[str]:
    """The active base, recomputed in pandas from the lake: signed up and bought within a year before as_of."""
    customers, tx = lake_customers(settings), lake_transactions(settings)
    recent = tx["timestamp"].between(as_of - pd.Timedelta(days=F.ACTIVE_WINDOW_DAYS), as_of, inclusive="left")
    return set(tx.loc[recent, "customer_id"]) & set(customers.loc[customers["signup_date"] < as_of, "customer_id"])


def table_frame(settings: Settings, name: str, snapshot_id: int | None = None) -> pd.DataFrame:
    """A (small) Iceberg table, or one snapshot of it, as its Python readers see it."""
    batches = list(scan_batches(settings, name, 1_000_000, None, snapshot_id))
    return pd.concat(batches, ignore_index=True) if batches else pd.DataFrame()


def historic(settings: Settings) -> pd.DataFrame:
    frame = table_frame(settings, HISTORIC_SCORES).astype({"score_date": str})
    return frame.sort_values(["score_date", "customer_id"]).reset_index(drop=True)


def data_files(settings: Settings, name: str) -> set[Path]:
    """The Parquet files under a table's data folder, committed or not."""
    return set((settings.data_root / "warehouse" / "propensity" / name / "data").rglob("*.parquet"))


def test_every_eligible_customer_is_scored_exactly_once(scored_world: Settings) -> None:
    settings = scored_world
    as_of = last_data_date(settings)
    rows = historic(settings)
    assert rows["score_date"].unique().tolist() == [str(as_of.date())]
    assert rows["customer_id"].is_unique
    assert set(rows["customer_id"]) == eligible(settings, as_of)
    assert rows["score"].between(0, 1).all()
    latest = table_frame(settings, LATEST_SCORES)
    assert sorted(latest["customer_id"]) == sorted(rows["customer_id"])


def test_rerunning_a_date_replaces_its_partition(scored_world: Settings) -> None:
    before = historic(scored_world)
    latest_before = latest_scores(scored_world)
    result = score_customers(scored_world)
    after = historic(scored_world)
    assert len(after) == len(before) == result.rows_scored == result.latest_rows
    assert latest_scores(scored_world).snapshot_id != latest_before.snapshot_id
    # Every row says what it was scored from (columns: they outlive the commits maintenance expires).
    features = feature_snapshot(scored_world, last_data_date(scored_world))
    assert set(after["model_version"]) == {result.model_version}
    assert set(after["feature_snapshot_id"]) == {features.snapshot_id}
    assert current_snapshot(scored_world, HISTORIC_SCORES).properties["model_version"] == result.model_version


@pytest.mark.parametrize(
    ("scored", "expected"),
    [
        (["a", "b", "c"], None),
        (["a", "b"], "2 rows, 2 distinct customers, 3 eligible; e.g. 'c' is not scored"),
        (["a", "b", "c", "c"], "4 rows, 3 distinct customers, 3 eligible"),
        (["a", "b", "c", "x"], "4 rows, 4 distinct customers, 3 eligible; e.g. 'x' is scored but not eligible"),
        (["a", "b", "x"], "3 rows, 3 distinct customers, 3 eligible; e.g. 'c' is not scored; e.g. 'x' is scored"),
        (["a", "b", "c", None], "4 rows, 3 distinct customers, 3 eligible"),
    ],
)
def test_reconcile_names_what_does_not_match(
    spark: SparkSession, scored: list[str | None], expected: str | None
) -> None:
    """Every eligible customer scored exactly once, or one line saying how the two sides differ."""
    staged = spark.createDataFrame([(c,) for c in scored], "customer_id string")
    eligible = spark.createDataFrame([(c,) for c in "abc"], "customer_id string")
    if expected is None:
        assert batch_scoring.reconcile(staged, eligible) == (3, 3)
    else:
        with pytest.raises(PropensityError, match=f"do not reconcile with the lake: {re.escape(expected)}"):
            batch_scoring.reconcile(staged, eligible)


def test_a_failed_reconciliation_leaves_both_tables_as_they_were(
    scored_world: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = scored_world
    before, latest_before = current_snapshot(settings, HISTORIC_SCORES), latest_scores(settings)
    real = F.active_customers

    def one_customer_too_many(customers, transactions, as_of):  # type: ignore[no-untyped-def]
        spark = customers.sparkSession
        return real(customers, transactions, as_of).unionByName(
            spark.createDataFrame([("ghost",)], "customer_id string")
        )

    monkeypatch.setattr(batch_scoring.F, "active_customers", one_customer_too_many)
    with pytest.raises(PropensityError, match=r"do not reconcile.*'ghost' is not scored"):
        score_customers(settings)
    assert current_snapshot(settings, HISTORIC_SCORES) == before
    assert latest_scores(settings) == latest_before


RESCORE = """
from propensity.settings import get_settings
step.score_customers(get_settings())
"""


def kill_while_writing(settings: Settings, table: str, module: str, writer: str, run: str) -> None:
    """Run `run` in a child process (Python and its JVM) whose `module.writer` (a table write) holds
    its second task off, one data file written and the commit still to come; kill the child as soon
    as a new data file of `table` appears. `run` sees `module` as `step`."""
    files_before = data_files(settings, table)
    code = textwrap.dedent(
        f"""
        import time
        import {module} as step

        real = step.{writer}

        def slowed(frame, *args, **kwargs):
            def hold_second(batches):
                from pyspark import TaskContext

                for batch in batches:
                    if TaskContext.get().partitionId() == 1:
                        time.sleep(600)
                    yield batch

            # No shuffle before the write (Iceberg would add one by partition), so the held task
            # is a writing task: the first task's file is written while the second one waits.
            frame.sparkSession.conf.set("spark.sql.iceberg.distribution-mode", "none")
            frame = frame.repartition(2, "customer_id").mapInPandas(hold_second, frame.schema)
            return real(frame, *args, **kwargs)

        step.{writer} = slowed
        """
    )
    env = {**os.environ, **settings.as_env()}
    log = settings.home / "killed-run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", code + run], env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # Idle, the file appears within half a minute; CI runs two suites and their JVMs on two
        # cores, where it once took more than four. The held task sleeps ten.
        deadline = time.monotonic() + 540
        while not data_files(settings, table) - files_before:
            assert process.poll() is None, f"the run ended before it wrote a data file:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the run never wrote a data file:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_run_killed_while_writing_its_files_changes_nothing_and_a_rerun_completes(scored_world: Settings) -> None:
    """The whole run (Python and its JVM) killed after it wrote data files of the historic table and
    before its commit: readers see the previous snapshot, and the rerun commits a clean one."""
    settings = scored_world
    before, latest_before = historic(settings), latest_scores(settings)
    kill_while_writing(settings, HISTORIC_SCORES, "components.batch_scoring", "overwrite_partitions", RESCORE)
    pd.testing.assert_frame_equal(historic(settings), before)
    assert latest_scores(settings) == latest_before

    result = score_customers(settings)
    assert result.rows_scored == len(before) and len(historic(settings)) == len(before)
    assert historic(settings)["customer_id"].tolist() == before["customer_id"].tolist()


def test_latest_scores_reach_the_online_store(scored_world: Settings) -> None:
    settings = scored_world
    assert publish_latest_scores(settings) > 0
    assert publish_latest_scores(settings) == 0  # this version is online already
    latest = table_frame(settings, LATEST_SCORES).set_index("customer_id")
    known = latest.index[0]
    store = feature_store(settings)
    online = store.get_online_features(
        features=["customer_score:score", "customer_score:model_version"], entity_rows=[{F.ENTITY: known}]
    ).to_dict()
    assert online["score"][0] == pytest.approx(latest.loc[known, "score"])
    assert online["model_version"][0] == latest.loc[known, "model_version"]


def test_scoring_a_date_without_a_snapshot_says_what_to_do(scored_world: Settings, tmp_path: Path) -> None:
    with pytest.raises(PropensityError, match="no feature snapshot for 2020-01-01; run the materialize step"):
        score_customers(scored_world, "2020-01-01")


# A scoring run held at its historic commit until told to go; one that loses a commit conflict
# prints its one-line error and exits 2.
GATED_RUN = gated_script(
    "components.batch_scoring",
    "overwrite_partitions",
    """from propensity.errors import PropensityError
from propensity.settings import get_settings

try:
    target.score_customers(get_settings(), sys.argv[3])
except PropensityError as error:
    print("ERROR", error)
    sys.exit(2)""",
)


def test_a_backfill_and_the_nightly_run_committing_at_once_both_land_and_latest_is_the_newest(
    scored_world: Settings,
) -> None:
    """Last in this module: it adds a backfilled date to the world. Both runs commit to the historic
    table (Iceberg orders the commits), or one fails in one line and its rerun lands; the table holds
    each date once, and the latest table is the newest date whatever order the runs finished in."""
    from propensity.feature_table import computed_snapshots

    settings = scored_world
    newest = str(last_data_date(settings).date())
    backfill = sorted(computed_snapshots(settings))[-3]
    runs = {"backfill": [backfill], "nightly": [""]}
    finished = release_together(GATED_RUN, runs, settings.home, settings.as_env())
    for name, run in finished.items():
        assert run.code in (0, 2), f"{name}:\n{run.err}"
        if run.code == 2:  # lost the conflict: one line, then a rerun lands
            error = [line for line in run.out.splitlines() if line.startswith("ERROR ")]
            assert len(error) == 1 and "run it again" in error[0], run.out
            score_customers(settings, backfill if name == "backfill" else None)

    rows = historic(settings)
    assert sorted(rows["score_date"].unique()) == [backfill, newest]
    for date in (backfill, newest):
        scored = rows.loc[rows["score_date"] == date, "customer_id"]
        assert scored.is_unique and set(scored) == eligible(settings, pd.Timestamp(date))
    latest = latest_scores(settings)
    assert latest.properties["score_date"] == newest
    # The nightly run's rows (its scoring time), not those it replaced, whichever run wrote latest last.
    columns = ["customer_id", "score", "scored_at"]
    latest_rows = table_frame(settings, LATEST_SCORES, latest.snapshot_id)[columns]
    nightly_rows = rows.loc[rows["score_date"] == newest, columns]
    pd.testing.assert_frame_equal(
        latest_rows.sort_values("customer_id").reset_index(drop=True),
        nightly_rows.sort_values("customer_id").reset_index(drop=True),
    )
