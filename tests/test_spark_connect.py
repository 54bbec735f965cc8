"""One Spark for a local run: a Spark Connect server started for it, and the steps its clients."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from propensity.catalog import table_name
from propensity.errors import PropensityError
from propensity.settings import Settings
from propensity.spark import CONNECT_MODE, connect_server, is_connect_session, spark_session
from propensity.tables import _commit, overwrite_partitions, scan_batches


@pytest.mark.slow  # starts a Spark Connect server
def test_a_client_writes_the_tables_and_its_python_runs_in_the_servers_workers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONNECT_MODE, raising=False)  # absent again after the test, whatever happens

    # Defined here, so that it is pickled by value: the server's workers cannot import the tests.
    def where(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield pd.DataFrame({"home": [os.environ.get("PROPENSITY_HOME", "")] * len(batch), "pid": os.getpid()})

    with connect_server(settings) as url:
        remote = settings.model_copy(update={"spark_master": url})
        spark = spark_session(remote, "propensity-tests")
        assert is_connect_session(spark) and os.environ.get(CONNECT_MODE) == "1"
        frame = spark.createDataFrame(
            [("a", 1.0, "d1"), ("b", 2.0, "d2")], "customer_id string, value double, day string"
        )
        overwrite_partitions(frame, remote, "t", "day")
        # The table is the catalog's, as a classic session or PyIceberg reads it.
        rows = pd.concat(list(scan_batches(settings, "t", 100, None, None)))
        assert sorted(rows["customer_id"]) == ["a", "b"]
        # mapInPandas runs in the server's Python workers, which see the run's settings.
        seen = spark.table(table_name(remote, "t")).mapInPandas(where, "home string, pid long").toPandas()
        assert set(seen["home"]) == {str(settings.home)} and os.getpid() not in set(seen["pid"])
        assert spark_session(remote, "again") is spark  # one session per server and process
    assert spark.is_stopped and CONNECT_MODE not in os.environ  # gone with its server


@pytest.mark.slow  # starts a Spark Connect server
def test_a_server_that_cannot_start_is_one_line_naming_its_log(settings: Settings) -> None:
    broken = settings.model_copy(update={"spark_master": "local[not-a-number]"})
    with (
        pytest.raises(
            PropensityError, match=r"^the Spark Connect server exited with code \d+; see .*spark-connect.log$"
        ),
        connect_server(broken),
    ):
        pass


# A step that writes slowly: its mapInPandas beats (a count in a file) every half second for 50 s
# before the write can commit.
SLOW_STEP = """
import sys, time
from pathlib import Path
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.tables import overwrite_partitions

beat = Path(sys.argv[1])

def slow(batches):
    for batch in batches:
        for count in range(100):
            (beat.parent / "next").write_text(str(count))
            (beat.parent / "next").replace(beat)  # whole: a reader never sees it half written
            time.sleep(0.5)
        yield batch

settings = Settings()
spark = spark_session(settings, "propensity-killed-step")
frame = spark.createDataFrame([("a", 1.0, "d1")], "customer_id string, value double, day string")
overwrite_partitions(frame.mapInPandas(slow, frame.schema), settings, "t", "day")
"""


def _last_beat(beat: Path, quiet: float, deadline: float) -> int:
    """The count once it has stopped changing for `quiet` seconds."""
    last, since = beat.read_text(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the killed step's query is still running"
        time.sleep(0.2)
        now = beat.read_text()
        if now != last:
            last, since = now, time.monotonic()
    return int(last)


@pytest.mark.slow  # starts a Spark Connect server
def test_a_killed_steps_query_is_interrupted_before_it_commits(settings: Settings, tmp_path: Path) -> None:
    """The server does not see a client die: the query of a step killed outright would run on and
    commit later, racing a rerun. It is interrupted once no client reattaches to it."""
    beat = tmp_path / "beat"
    with connect_server(settings) as url:
        remote = settings.model_copy(update={"spark_master": url})
        step = subprocess.Popen([sys.executable, "-c", SLOW_STEP, str(beat)], env={**os.environ, **remote.as_env()})
        try:
            deadline = time.monotonic() + 120
            while not beat.exists():
                assert step.poll() is None and time.monotonic() < deadline, "the step's query did not start"
                time.sleep(0.2)
        finally:
            step.kill()
            step.wait()
        # Without the interruption the query beats to 99 (50 s) and commits its row.
        stopped_at = _last_beat(beat, quiet=3.0, deadline=time.monotonic() + 60)
        assert stopped_at < 60, f"the killed step's query ran on to beat {stopped_at}"
        assert sum(len(batch) for batch in scan_batches(settings, "t", 100)) == 0  # created, never written


def test_a_conflict_reported_by_spark_connect_is_the_one_line_conflict() -> None:
    """A Connect client gets Iceberg's exception as "(class) message", not a Py4J error."""
    from pyspark.errors.exceptions.connect import UnknownException

    def conflicting_write() -> None:
        raise UnknownException(
            "Found conflicting files that can contain records matching true: [f.parquet]",
            reason="org.apache.iceberg.exceptions.ValidationException",
        )

    with pytest.raises(PropensityError, match=r"^another run committed to the table t .*\(Found conflicting files"):
        _commit("t", conflicting_write)
