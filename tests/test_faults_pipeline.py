"""Injected faults in the pipeline's commits: a step is killed (SIGKILL, a real process death, in a
child process) between writing and committing, and in the middle of its commit. Each time the
previous state keeps serving, nothing is duplicated or half-visible, and a rerun completes with the
result of an uninterrupted run.

* batch scoring (Iceberg tables): killed before it commits the historic partition, and before it
  replaces the latest table (a kill while the JVM writes data files: tests/test_batch_scoring.py);
* ingest: killed between its customers and its transactions commits;
* the offline feature table (Iceberg): killed before its one commit, and while its data files are written;
* model registration: killed between the two registrations, before the pairing tag, and between the
  two `challenger` aliases.
"""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from components.batch_scoring import latest_scores, score_customers
from components.registry import Decision, register_models
from propensity import features as F
from propensity.catalog import table_name
from propensity.errors import PropensityError
from propensity.feature_table import FEATURE_SNAPSHOTS as FEATURE_TABLE
from propensity.feature_table import (
    SNAPSHOT_PARTITION,
    build_feature_table,
    computed_snapshots,
    stale_snapshots,
)
from propensity.lake import TRANSACTIONS, ingest, last_data_date
from propensity.settings import Settings, get_settings
from propensity.spark import spark_session
from propensity.synthetic import generate
from propensity.tables import (
    HISTORIC_SCORES,
    LATEST_SCORES,
    SCORE_DATE,
    current_snapshot,
    partitions,
    scan_batches,
)
from propensity.tracking import (
    CHALLENGER,
    CHAMPION,
    ModelRef,
    alias_version,
    configure,
    promote,
    release,
    release_at,
    rolled_back_versions,
    served_realtime_model,
)
from tests.test_batch_scoring import kill_while_writing, table_frame
from tests.test_ingest import lake_customers, lake_transactions

# Starts Spark and kills its writers: left out by `make test-fast`.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Run in the child before the step: ways to die at a chosen moment, as a killed pod does.
CHILD_PRELUDE = '''
import os, shutil, signal, sys

def die(*args, **kwargs):
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def die_on_call(owner, name, call):
    """`owner.name` kills the process on its `call`-th call (before doing anything)."""
    real = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            die()
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)
'''


def run_forked(body: str, **names: object) -> int:
    """Run `body` after the prelude (with `names` defined) in a fork of this process, and return its
    exit code: -9 when it was killed. The fork shares this process's Spark JVM (which it uses only
    while this process waits), and opens its own connections to the MLflow store."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            import gc

            from sqlalchemy.engine import Engine

            for engine in [o for o in gc.get_objects() if isinstance(o, Engine)]:
                engine.dispose(close=False)  # the parent's pooled connections stay the parent's
            exec(CHILD_PRELUDE + textwrap.dedent(body), dict(names))
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_killed(body: str, **names: object) -> None:
    code = run_forked(body, **names)
    assert code == -signal.SIGKILL, f"the step was not killed (exit {code}; its error is above)"


# ---------------------------------------------------------------------------------------------------
# The world: a small lake, three feature snapshots, a champion, one scoring run.

FEATURE_SNAPSHOTS = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    import mlflow.sklearn
    import skops.io as sio
    from sklearn.utils import shuffle

    from components.training import make_model
    from propensity.feature_table import feature_snapshot, scoring_features
    from propensity.tracking import is_trusted_model_type

    root = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROPENSITY_HOME", str(root / "home"))
        mp.setenv("PROPENSITY_SPARK_SHUFFLE_PARTITIONS", "2")
        mp.setenv("PROPENSITY_SCORING_PARTITIONS", "1")  # one Python worker loads the model, once
        settings = get_settings()
        data = generate(customers=150, days=90, seed=5)
        data.transactions.to_parquet(root / "tx.parquet", index=False)
        data.customers.to_parquet(root / "customers.parquet", index=False)
        ingest(settings, root / "tx.parquet", root / "customers.parquet")
        spark = spark_session(settings, "propensity-faults")
        as_of = last_data_date(settings)
        dates = [as_of - pd.Timedelta(days=7 * k) for k in range(FEATURE_SNAPSHOTS)]
        assert build_feature_table(spark, settings, dates)

        # A champion: any model of the batch features that scores every row (its quality is not the point).
        rows = scoring_features(spark, settings, feature_snapshot(settings, as_of)).toPandas()
        labels = shuffle(np.arange(len(rows)) % 2, random_state=0)
        model = make_model(F.BATCH_MODEL_FEATURES, {"max_iter": 5}).fit(rows[F.BATCH_MODEL_FEATURES], labels)
        with mlflow.start_run(experiment_id=configure(settings)) as run:
            # Saved as training saves it (skops, trusted types only), without its slow extras: no
            # input example to validate, no pip requirements to infer.
            trusted = [t for t in sio.get_untrusted_types(data=sio.dumps(model)) if is_trusted_model_type(t)]
            mlflow.sklearn.log_model(model, name="model", skops_trusted_types=trusted, pip_requirements=[])
        registered = register_models(settings, run.info.run_id, run.info.run_id, Decision.unchecked("promote", "t"))
        promote(settings, registered.batch.version, registered.realtime.version)
        score_customers(settings)
        yield settings


def historic(settings: Settings) -> pd.DataFrame:
    """The historic table as its Python readers see it (PyIceberg, the current snapshot)."""
    frame = table_frame(settings, HISTORIC_SCORES).astype({SCORE_DATE: str})
    return frame.sort_values([SCORE_DATE, F.ENTITY]).reset_index(drop=True)


def latest(settings: Settings, snapshot_id: int | None = None) -> pd.DataFrame:
    frame = table_frame(settings, LATEST_SCORES, snapshot_id)
    return frame.sort_values(F.ENTITY).reset_index(drop=True)


def scores_only(frame: pd.DataFrame) -> pd.DataFrame:
    """A scoring run's result without its timestamp."""
    return frame.drop(columns=["scored_at"]).reset_index(drop=True)


def assert_one_clean_scoring(settings: Settings, expected: pd.DataFrame) -> None:
    after = historic(settings)
    assert after[SCORE_DATE].nunique() == 1
    assert list(partitions(settings, HISTORIC_SCORES, SCORE_DATE)) == [after[SCORE_DATE].iloc[0]]
    assert after[F.ENTITY].is_unique
    pd.testing.assert_frame_equal(scores_only(after), scores_only(expected))
    now = latest(settings)
    assert now[F.ENTITY].tolist() == after[F.ENTITY].tolist()
    assert now["scored_at"].tolist() == after["scored_at"].tolist()  # the same run's rows


def test_scoring_killed_before_the_historic_commit_leaves_both_tables_and_a_rerun_completes(
    world: Settings, spark: SparkSession
) -> None:
    settings = world
    before, historic_before = historic(settings), current_snapshot(settings, HISTORIC_SCORES)
    latest_before = latest_scores(settings)
    run_killed(
        """
        import components.batch_scoring as step
        step.overwrite_partitions = die  # the scores are computed and reconciled, not committed
        step.score_customers(settings)
        """,
        settings=settings,
    )
    assert current_snapshot(settings, HISTORIC_SCORES) == historic_before
    pd.testing.assert_frame_equal(historic(settings), before)
    assert spark.table(table_name(settings, HISTORIC_SCORES)).count() == len(before)
    assert latest_scores(settings) == latest_before

    result = score_customers(settings)
    assert result.rows_scored == result.latest_rows == len(before)
    assert latest_scores(settings) != latest_before
    assert_one_clean_scoring(settings, before)


def test_scoring_killed_before_the_latest_commit_keeps_the_latest_snapshot(world: Settings) -> None:
    settings = world
    before, latest_before = historic(settings), latest_scores(settings)
    latest_rows = latest(settings)
    run_killed(
        """
        import components.batch_scoring as step
        step.replace_table = die  # the historic partition is committed, the latest table not yet
        step.score_customers(settings)
        """,
        settings=settings,
    )
    # Readers of the latest table still see the previous snapshot, whole.
    assert latest_scores(settings) == latest_before
    pd.testing.assert_frame_equal(latest(settings), latest_rows)
    # The historic partition of the date was replaced whole by the killed run's (same customers and
    # scores: the same champion on the same snapshot); the latest table is behind it until the rerun.
    pd.testing.assert_frame_equal(scores_only(historic(settings)), scores_only(before))
    assert historic(settings)["scored_at"].tolist() != before["scored_at"].tolist()

    score_customers(settings)
    assert_one_clean_scoring(settings, before)
    # A reader that pinned the previous snapshot can still read it (until snapshots are expired).
    pd.testing.assert_frame_equal(latest(settings, latest_before.snapshot_id), latest_rows)


# ---------------------------------------------------------------------------------------------------
# Ingest (Iceberg: the customers table, then the file's days of transactions, one commit each)


def test_ingest_killed_before_its_transactions_commit_keeps_the_days_and_a_rerun_completes(
    world: Settings, tmp_path: Path
) -> None:
    """A day ingested again, killed between its two commits: readers see the transactions as they
    were, whole; the rerun replaces the day once, as an uninterrupted run does."""
    settings = world.with_values(home=tmp_path / "home")
    first = pd.DataFrame(
        {"customer_id": ["a", "b", "a"], "timestamp": ["2025-01-02", "2025-01-03", "2025-01-03"], "amount": [1.0, 2, 3]}
    )
    again = pd.DataFrame({"customer_id": ["c", "a"], "timestamp": ["2025-01-03", "2025-01-04"], "amount": [5.0, 6]})
    first.to_csv(tmp_path / "first.csv", index=False)
    again.to_csv(tmp_path / "again.csv", index=False)
    ingest(settings, tmp_path / "first.csv")
    before, rows = current_snapshot(settings, TRANSACTIONS), lake_transactions(settings)
    run_killed(
        """
        import propensity.lake as lake
        lake.overwrite_partitions = die  # customers committed (c is new), transactions not yet
        lake.ingest(settings, path)
        """,
        settings=settings,
        path=tmp_path / "again.csv",
    )
    assert current_snapshot(settings, TRANSACTIONS) == before
    pd.testing.assert_frame_equal(lake_transactions(settings), rows)
    assert sorted(lake_customers(settings)["customer_id"]) == ["a", "b", "c"]

    result = ingest(settings, tmp_path / "again.csv")
    assert (result.days, result.customers_total) == (2, 3)
    after = lake_transactions(settings)
    assert after[["customer_id", "amount", "date"]].values.tolist() == [
        ["a", 1.0, "2025-01-02"],
        ["c", 5.0, "2025-01-03"],
        ["a", 6.0, "2025-01-04"],
    ]


# ---------------------------------------------------------------------------------------------------
# The offline feature table


def feature_rows(settings: Settings) -> pd.DataFrame:
    frame = pd.concat(scan_batches(settings, FEATURE_TABLE, 10**6))
    return frame.sort_values([SNAPSHOT_PARTITION, F.ENTITY]).reset_index(drop=True)


def rebuild_killed(settings: Settings, definition: str, kill: str) -> None:
    """Recompute every snapshot (a new feature definition) in a child killed by `kill`."""
    dates = [str(d.date()) for d in feature_dates(settings)]
    run_killed(
        f"""
        import pandas as pd
        import propensity.feature_table as feature_table
        from propensity import features as F
        from propensity.spark import spark_session
        F.FEATURE_DEFINITION = {definition!r}
        {kill}
        spark = spark_session(settings, "killed-features")
        feature_table.build_feature_table(spark, settings, [pd.Timestamp(d) for d in {dates!r}])
        """,
        settings=settings,
    )


def feature_dates(settings: Settings) -> list[pd.Timestamp]:
    return [pd.Timestamp(key) for key in sorted(computed_snapshots(settings))]


def rebuild(
    spark: SparkSession, settings: Settings, definition: str, monkeypatch: pytest.MonkeyPatch, expected: pd.DataFrame
) -> None:
    """The rerun: recomputes every snapshot again and yields the table an uninterrupted run yields."""
    monkeypatch.setattr(F, "FEATURE_DEFINITION", definition)
    assert len(build_feature_table(spark, settings, feature_dates(settings))) == FEATURE_SNAPSHOTS
    after = feature_rows(settings)
    pd.testing.assert_frame_equal(after, expected)  # same lake, same features: the same rows
    assert not after.duplicated([SNAPSHOT_PARTITION, F.ENTITY]).any()
    assert len(partitions(settings, FEATURE_TABLE, SNAPSHOT_PARTITION)) == FEATURE_SNAPSHOTS
    assert not build_feature_table(spark, settings, feature_dates(settings))  # and it is complete


def test_feature_table_killed_before_its_commit_is_unchanged_and_a_rerun_completes(
    world: Settings, spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = world
    before, snapshot = feature_rows(settings), current_snapshot(settings, FEATURE_TABLE)
    computed = computed_snapshots(settings)
    definition = F.FEATURE_DEFINITION + ",fault-1"
    rebuild_killed(settings, definition, "feature_table.overwrite_where = die")
    pd.testing.assert_frame_equal(feature_rows(settings), before)
    assert current_snapshot(settings, FEATURE_TABLE) == snapshot and computed_snapshots(settings) == computed
    rebuild(spark, settings, definition, monkeypatch, before)


def test_feature_table_killed_while_writing_its_files_is_unchanged_and_a_rerun_completes(
    world: Settings, spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole run (Python and its JVM) killed after it wrote data files of its one commit: readers
    see the previous snapshot, whole (every date old, none missing or mixed); the rerun's code sees
    every snapshot as stale until it has recomputed them all."""
    settings = world
    before, snapshot = feature_rows(settings), current_snapshot(settings, FEATURE_TABLE)
    computed = computed_snapshots(settings)
    definition = F.FEATURE_DEFINITION + ",fault-2"
    dates = [str(d.date()) for d in feature_dates(settings)]
    recompute = f"""
import pandas as pd
from propensity import features as F
from propensity.settings import get_settings
from propensity.spark import spark_session
F.FEATURE_DEFINITION = {definition!r}
settings = get_settings()
step.build_feature_table(spark_session(settings, "killed-features"), settings, [pd.Timestamp(d) for d in {dates!r}])
"""
    kill_while_writing(settings, FEATURE_TABLE, "propensity.feature_table", "overwrite_where", recompute)
    pd.testing.assert_frame_equal(feature_rows(settings), before)
    assert current_snapshot(settings, FEATURE_TABLE) == snapshot and computed_snapshots(settings) == computed
    with monkeypatch.context() as new_code:
        new_code.setattr(F, "FEATURE_DEFINITION", definition)
        assert stale_snapshots(settings, []) == sorted(pd.Timestamp(key) for key in computed)
    rebuild(spark, settings, definition, monkeypatch, before)


# ---------------------------------------------------------------------------------------------------
# Model registration


@pytest.fixture
def registry(world: Settings) -> tuple[Settings, list[str]]:
    """The world's registry (a promoted release), and the champion's run to register again and again
    (as both models of a release: what matters here is the registry, not the models)."""
    champion = alias_version(world, world.model_name, CHAMPION)
    assert champion is not None
    return world, [champion.run_id, champion.run_id]


def batch_versions(settings: Settings) -> set[str]:
    from mlflow import MlflowClient

    return {str(v.version) for v in MlflowClient().search_model_versions(f"name = '{settings.model_name}'")}


def aliases(settings: Settings, alias: str) -> tuple[ModelRef | None, ModelRef | None]:
    return alias_version(settings, settings.model_name, alias), alias_version(
        settings, settings.realtime_model_name, alias
    )


def assert_whole_release(settings: Settings, alias: str) -> None:
    """Both models' `alias` name the two versions of one release."""
    batch, realtime = aliases(settings, alias)
    assert batch is not None and realtime is not None
    assert release(settings, batch.version).realtime == realtime


KILL_POINTS = {
    "between the two registrations": "die_on_call(mlflow, 'register_model', 2)",
    "before the pairing tag": "die_on_call(MlflowClient, 'set_model_version_tag', 1)",
    "between the two challenger aliases": "die_on_call(MlflowClient, 'set_registered_model_alias', 2)",
}


@pytest.mark.parametrize("where", list(KILL_POINTS))
def test_registration_killed_keeps_the_release_and_a_rerun_registers_cleanly(
    registry: tuple[Settings, list[str]], where: str
) -> None:
    settings, runs = registry
    champion, challenger = aliases(settings, CHAMPION), release_at(settings, CHALLENGER)
    served = served_realtime_model(settings)
    versions_before = batch_versions(settings)
    run_killed(
        f"""
        import mlflow
        from mlflow import MlflowClient
        from components.registry import Decision, register_models
        {KILL_POINTS[where]}
        register_models(settings, {runs[0]!r}, {runs[1]!r}, Decision.unchecked("promote", "killed"))
        """,
        settings=settings,
    )
    # What serves and what monitoring and scoring resolve: the previous release, whole.
    assert aliases(settings, CHAMPION) == champion
    assert_whole_release(settings, CHAMPION)
    assert served_realtime_model(settings) == served
    assert rolled_back_versions(settings) == frozenset()
    # `challenger` still names the previous release (the batch model's alias is the commit point,
    # whatever the real-time model's alias was moved to before the kill).
    assert release_at(settings, CHALLENGER) == challenger
    new = batch_versions(settings) - versions_before
    assert len(new) == 1
    orphan = new.pop()
    if where != "between the two challenger aliases":
        # The half-registered version names no partner: resolving it as a release says so.
        with pytest.raises(PropensityError, match=f"version {orphan} of .* names no real-time model"):
            release(settings, orphan)

    rerun = register_models(settings, *runs, Decision.unchecked("promote", "rerun"))
    assert rerun.batch.version != orphan
    assert_whole_release(settings, CHALLENGER)
    assert aliases(settings, CHALLENGER) == (rerun.batch, rerun.realtime)
    promote(settings, rerun.batch.version, rerun.realtime.version)
    assert_whole_release(settings, CHAMPION)
    assert served_realtime_model(settings) == rerun.realtime
    assert rolled_back_versions(settings) == frozenset()


def test_promotion_killed_between_the_two_aliases_keeps_the_champion_release(
    registry: tuple[Settings, list[str]],
) -> None:
    settings, runs = registry
    champion = release_at(settings, CHAMPION)
    assert champion is not None
    new = register_models(settings, *runs, Decision.unchecked("promote", "to promote"))
    run_killed(
        f"""
        from mlflow import MlflowClient
        from propensity.tracking import promote
        die_on_call(MlflowClient, 'set_registered_model_alias', 2)
        promote(settings, {new.batch.version!r}, {new.realtime.version!r})
        """,
        settings=settings,
    )
    # The real-time model's alias moved, the batch model's (the commit point) did not: every reader
    # (the predictor, scoring, the gate, a rollback) still resolves the previous release, whole.
    assert alias_version(settings, settings.realtime_model_name, CHAMPION) == new.realtime
    assert release_at(settings, CHAMPION) == champion
    assert served_realtime_model(settings) == champion.realtime
    promote(settings, new.batch.version, new.realtime.version)  # the rerun
    assert_whole_release(settings, CHAMPION)
    assert served_realtime_model(settings) == new.realtime
