"""Fuzzed inputs for `propensity ingest`: malformed rows (hypothesis) and malformed files.

Every input is either accepted (valid by the data contract in `propensity.lake`) or rejected with a
PropensityError of one line without Java or Python stack text; a rejected input leaves the lake byte
for byte as it was, and a valid ingest still succeeds afterwards. Spark costs seconds per session
and about a second per ingest, so rows are drawn by hypothesis up front and checked in a few files,
one Spark job each; files share one lake and one session; the CLI runs while the rest does.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import gzip
import hashlib
import io
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pyspark.sql import functions as sf

from propensity.errors import PropensityError
from propensity.lake import CUSTOMERS, TRANSACTIONS, ingest, normalize_transactions, read_file, transaction_row_rules
from propensity.settings import Settings, get_settings
from propensity.spark import spark_session
from propensity.tables import current_snapshot
from tests.test_ingest import lake_transactions

ROOT = Path(__file__).resolve().parents[1]
LEAKS = ("Traceback", "org.apache", "at org.", "java.", "py4j", "Py4J", "\tat ", "scala.")
HEADER = "customer_id,timestamp,amount\n"
TX_HEADER = "transaction_id,customer_id,timestamp,amount,items\n"
MB = 1_000_000


# ---------------------------------------------------------------------------------------------------
# The lake and what "unchanged" means


def snapshot(lake: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under the lake: size, modification time and (files) content hash."""
    found = {}
    for path in sorted(lake.rglob("*")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(lake))] = (stat.st_size, stat.st_mtime_ns, digest)
    return found


def lake_state(settings: Settings) -> tuple[object, ...]:
    """Every table file, and the snapshot each lake table's readers see."""
    tables = (current_snapshot(settings, TRANSACTIONS), current_snapshot(settings, CUSTOMERS))
    return (snapshot(settings.data_root / "warehouse"), *tables)


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message, repr(message[:500])
    assert len(message) < 600, f"{len(message)} characters: {message[:200]!r}"
    leaked = [leak for leak in LEAKS if leak in message]
    assert not leaked, (leaked, message)


def rejected(settings: Settings, transactions: Path, customers: Path | None = None) -> str:
    """Ingest must fail with one clear line and leave the lake exactly as it was."""
    before = lake_state(settings)
    with pytest.raises(PropensityError) as caught:
        ingest(settings, transactions, customers)
    assert lake_state(settings) == before, f"partial write for {transactions.name}"
    assert_one_line(str(caught.value))
    return str(caught.value)


def lake_ids(settings: Settings) -> set[str]:
    return set(lake_transactions(settings)["transaction_id"])


SEED = TX_HEADER + "seed-1,a,2024-06-01T10:00:00,10,2\nseed-2,b,2024-06-02,5.5,\nseed-3,a,2024-06-03,0,1\n"


@dataclass
class CliRun:
    name: str
    process: subprocess.Popen[str]
    home: Path


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[CliRun]]:
    """`propensity ingest` on bad files in their own processes, started first: a JVM start costs
    seconds, spent while the in-process tests run."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    files = {
        # Rejected before Spark starts.
        "utf16.csv": ("\ufeff" + HEADER + "a,2025-01-02,1\n").encode("utf-16-le"),
        # A malformed row (Spark fails a task: its Java stack trace must stay off stderr) quoting
        # text that is Rich markup.
        "markup.csv": (HEADER + "[/],2025-01-02,1,5\n").encode(),
    }
    runs = []
    for name, content in [*files.items(), ("missing.csv", None)]:
        path = root / name
        if content is not None:
            path.write_bytes(content)
        home = root / f"home-{path.stem}"
        env = {**os.environ, "PROPENSITY_HOME": str(home)}
        env.pop("PROPENSITY_TABLES", None)
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "propensity"), "ingest", "--transactions", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        runs.append(CliRun(name, process, home))
    yield runs
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, cli_runs: list[CliRun]) -> Settings:
    """One small lake for the whole module (ids seed-1..3 on 2024-06-01..03, days no other test writes)."""
    home = tmp_path_factory.mktemp("fuzz-home")
    settings = get_settings(home=home, tables=None, spark_shuffle_partitions=2)
    seed = home / "seed.csv"
    seed.write_text(SEED)
    ingest(settings, seed)
    return settings


# ---------------------------------------------------------------------------------------------------
# Row level: >= 1,000 malformed rows drawn by hypothesis, checked in a few files


@dataclass(frozen=True)
class Row:
    """One drawn row; `broken` names the rules it must break (empty: a valid row)."""

    broken: frozenset[str]
    transaction_id: str | None  # None: a unique id is assigned
    customer_id: str
    timestamp: str
    amount: str
    items: str


TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters="\ufffd"),
    min_size=1,
    max_size=12,
).filter(lambda s: s.strip(" "))
CONTROL = st.sampled_from([*map(chr, [*range(1, 9), 11, 12, *range(14, 32), 127]), "\ufffd"])
DAY = st.integers(1, 7).map(lambda d: f"2025-01-0{d}")
CLOCK = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)).map(
    lambda t: f"{t[0]:02d}:{t[1]:02d}:{t[2]:02d}"
)
VALID_TIMESTAMP = st.one_of(
    DAY,
    st.builds(
        lambda d, c, sep, zone: f"{d}{sep}{c}{zone}",
        DAY,
        CLOCK,
        st.sampled_from("T "),
        st.sampled_from(["", "Z", "+02:00", ".125"]),
    ),
    st.sampled_from(["1678-01-01", "1678-01-01T00:00:00", "2261-12-31T23:59:59", "1970-01-01", "1970-01-01T00:00:00Z"]),
)
UNPARSABLE_TIMESTAMP = st.one_of(
    st.sampled_from(
        ["", "not a date", "2025-13-01", "31/01/2025", "yesterday", "0", "1700000000", "2025-01-01T25:00:00", "NaT"]
    ),
    st.text("abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=8).map(lambda s: "x" + s),
)
DISTANT_TIMESTAMP = st.one_of(
    st.builds(
        lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}",
        st.one_of(st.integers(1, 1677), st.integers(2262, 9999)),
        st.integers(1, 12),
        st.integers(1, 28),
    ),
    st.sampled_from(["10000-01-01", "1677-09-22T00:00:00", "1677-12-31T23:59:59", "2262-01-01T00:00:00"]),
)
VALID_AMOUNT = st.one_of(
    st.integers(0, 10**9).map(str),
    st.floats(0, 1e12, allow_nan=False, allow_infinity=False).map(repr),
    st.decimals(0, 10**6, places=2, allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["0", "0.0", "1e3", "-0.0"]),
)
NON_NUMERIC_AMOUNT = st.one_of(
    st.sampled_from(["", "abc", "NaN", "nan", "inf", "Infinity", "1e400", "1,5", "12 EUR", "$5", "0x10", "1.2.3"]),
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6).map(lambda s: "n" + s),
)
NEGATIVE_AMOUNT = st.one_of(
    st.integers(-(10**6), -1).map(str), st.floats(-1e9, -1e-6).map(repr), st.sampled_from(["-0.01", "-1e3"])
)
VALID_ITEMS = st.one_of(
    st.just(""), st.integers(0, 10**6).map(str), st.integers(0, 1000).map(lambda i: f"{i}.0"), st.just("1e3")
)
BAD_ITEMS = st.one_of(
    st.sampled_from(["2.5", "many", "-1", "1e30", "NaN", "inf", "one", "1/2"]),
    st.integers(-1000, -1).map(str),
    st.floats(0.01, 0.99).map(lambda f: repr(1 + f)),
)


def _row(broken: set[str], **fields: st.SearchStrategy[str | None]) -> st.SearchStrategy[Row]:
    defaults: dict[str, st.SearchStrategy[str | None]] = {
        "transaction_id": st.none(),
        "customer_id": TEXT,
        "timestamp": VALID_TIMESTAMP,
        "amount": VALID_AMOUNT,
        "items": VALID_ITEMS,
    }
    return st.builds(Row, broken=st.just(frozenset(broken)), **{**defaults, **fields})


UNREADABLE_ID = st.builds(lambda a, c, b: f"{a}{c}{b}", TEXT, CONTROL, TEXT)
ROW = st.one_of(
    _row(set()),
    _row({"empty_ids"}, customer_id=st.sampled_from(["", " ", "   "])),
    _row({"unreadable"}, customer_id=UNREADABLE_ID),
    _row({"unreadable"}, transaction_id=UNREADABLE_ID),
    _row({"bad_ts"}, timestamp=UNPARSABLE_TIMESTAMP),
    _row({"early_or_late"}, timestamp=DISTANT_TIMESTAMP),
    _row({"bad_amount"}, amount=NON_NUMERIC_AMOUNT),
    _row({"bad_amount", "negative"}, amount=st.sampled_from(["-inf", "-Infinity", "-1e400"])),
    _row({"negative"}, amount=NEGATIVE_AMOUNT),
    _row({"bad_items"}, items=BAD_ITEMS),
    _row({"empty_tx_ids"}, transaction_id=st.sampled_from(["", "  "])),
)


def draw_rows(batches: int, size: int) -> list[Row]:
    """Rows drawn by hypothesis (fixed seed), a list at a time: far faster than a row per example."""
    rows: list[Row] = []

    @hypothesis_settings(
        max_examples=batches,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(ROW, min_size=size, max_size=size))
    def collect(drawn: list[Row]) -> None:
        rows.extend(drawn)

    collect()
    return rows


def write_rows(path: Path, rows: list[tuple[str, Row]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["transaction_id", "customer_id", "timestamp", "amount", "items"])
        for tx_id, row in rows:
            writer.writerow([tx_id, row.customer_id, row.timestamp, row.amount, row.items])


def as_written(row: Row) -> tuple[str, pd.Timestamp, float, int]:
    """A valid row as the lake must hold it: ids trimmed of spaces, times in UTC without a zone."""
    timestamp = pd.Timestamp(row.timestamp)
    if timestamp.tzinfo is not None:
        timestamp = timestamp.tz_convert("UTC").tz_localize(None)
    return row.customer_id.strip(" "), timestamp, float(row.amount), int(float(row.items)) if row.items else 1


def as_read(got: Any) -> tuple[str, pd.Timestamp, float, int]:
    return got["customer_id"], pd.Timestamp(got["timestamp"]), got["amount"], got["items"]


def test_every_malformed_row_is_flagged_and_every_valid_row_accepted(lake: Settings, tmp_path: Path) -> None:
    rows = draw_rows(batches=14, size=100)
    numbered = [(row.transaction_id if row.transaction_id is not None else f"h-{i}", row) for i, row in enumerate(rows)]
    malformed = [r for r in numbered if r[1].broken]
    valid = [r for r in numbered if not r[1].broken]
    assert len(malformed) >= 1000 and len(valid) >= 50, (len(malformed), len(valid))
    spark = spark_session(lake, "propensity-tests")
    rules = transaction_row_rules()
    batches = [numbered[i::3] for i in range(3)]
    for b, batch in enumerate(batches):
        path = tmp_path / f"rows-{b}.csv"
        write_rows(path, batch)
        # One Spark job: which rules each row breaks (a single small file keeps its row order).
        tx = normalize_transactions(read_file(spark, path), lake)
        flags = tx.select(
            "transaction_id",
            "customer_id",
            sf.col("timestamp").cast("string").alias("timestamp"),  # year 10000 is no Python datetime
            "amount",
            "items",
            *[sf.coalesce(broken, sf.lit(False)).alias(name) for name, (broken, _) in rules.items()],
        ).collect()
        assert len(flags) == len(batch)
        wrong = []
        for (tx_id, row), got in zip(batch, flags, strict=True):
            fired = {name for name in rules if got[name]}
            if row.transaction_id is None and got["transaction_id"] != tx_id:
                wrong.append(("order", tx_id, got["transaction_id"]))
            elif (row.broken and not fired & row.broken) or (not row.broken and fired):
                wrong.append((sorted(row.broken), sorted(fired), row))
            elif not row.broken and as_read(got) != as_written(row):
                wrong.append(("changed", as_written(row), as_read(got)))
        assert not wrong, wrong[:10]
        rejected(lake, path)
    # After all those rejections, the valid rows go in (and only they; the seed's days stay).
    path = tmp_path / "valid.csv"
    write_rows(path, valid)
    result = ingest(lake, path)
    assert result.transactions == len(valid)
    assert lake_ids(lake) >= {"seed-1", "seed-2", "seed-3"} | {tx_id for tx_id, _ in valid}


# ---------------------------------------------------------------------------------------------------
# File level: malformed files, one ingest each in the shared session and lake

Writer = Callable[[Path], tuple[Path, Path | None]]


def _bytes(content: bytes, name: str = "tx.csv", customers: bytes | None = None) -> Writer:
    def write(folder: Path) -> tuple[Path, Path | None]:
        (folder / name).write_bytes(content)
        if customers is None:
            return folder / name, None
        (folder / "customers.csv").write_bytes(customers)
        return folder / name, folder / "customers.csv"

    return write


def _text(content: str, name: str = "tx.csv") -> Writer:
    return _bytes(content.encode(), name)


def _parquet(table: pa.Table | Callable[[], pa.Table], mangle: Callable[[bytes], bytes] | None = None) -> Writer:
    def write(folder: Path) -> tuple[Path, Path | None]:
        path = folder / "tx.parquet"
        pq.write_table(table() if callable(table) else table, path)
        if mangle is not None:
            path.write_bytes(mangle(path.read_bytes()))
        return path, None

    return write


def _good_table(rows: int = 2000) -> pa.Table:
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i % 50}" for i in range(rows)],
            "timestamp": pd.date_range("2025-01-01", periods=rows, freq="min"),
            "amount": [float(i) for i in range(rows)],
        }
    )
    return pa.Table.from_pandas(frame, preserve_index=False)


def _flip_middle(data: bytes) -> bytes:
    mangled = bytearray(data)
    for i in range(200, min(len(data) - 200, 4000)):
        mangled[i] ^= 0x5A
    return bytes(mangled)


def _gzip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as file:
        file.write(data)
    return buffer.getvalue()


ROW_OK = "a,2025-01-02,1\n"
MANY_ROWS = "".join(f"c{i},2025-01-02T10:00:00,{i}\n" for i in range(300))
FILES: list[tuple[str, Writer, str]] = [
    # Encodings
    ("utf16-bom", _bytes(("\ufeff" + HEADER + ROW_OK).encode("utf-16-le")), "UTF-16"),
    ("utf16-be-bom", _bytes(("\ufeff" + HEADER + ROW_OK).encode("utf-16-be")), "UTF-16"),
    ("utf16-no-bom", _bytes((HEADER + ROW_OK).encode("utf-16-le")), "NUL bytes"),
    ("utf32", _bytes((HEADER + ROW_OK).encode("utf-32")), "UTF-16 (or UTF-32)"),
    ("latin1-id", _bytes((HEADER + "José,2025-01-02,1\n").encode("latin-1")), "undecodable"),
    ("invalid-utf8-id", _bytes(HEADER.encode() + b"ab\xc3\x28\xff,2025-01-02,1\n"), "undecodable"),
    ("nul-in-id", _bytes((HEADER + "a\x00b,2025-01-02,1\n").encode()), "NUL bytes"),
    ("nul-in-amount", _bytes((HEADER + "a,2025-01-02,1\x00\n").encode()), "NUL bytes"),
    ("nul-after-4k", _bytes((HEADER + MANY_ROWS + "a\x00b,2025-01-02,1\n").encode()), "control characters"),
    ("control-char-id", _text(HEADER + "a\x01b,2025-01-02,1\n"), "control characters"),
    ("gzip-named-csv", _bytes(_gzip((HEADER + ROW_OK).encode())), "NUL bytes"),
    # Delimiters
    ("semicolon", _text("customer_id;timestamp;amount\na;2025-01-02;1\n"), "separated by ';'"),
    ("semicolon-decimal-comma", _text("customer_id;timestamp;amount\na;2025-01-02;1,5\n"), "separated by ';'"),
    ("tab", _text("customer_id\ttimestamp\tamount\na\t2025-01-02\t1\n"), "separated by '\\t'"),
    ("pipe", _text("customer_id|timestamp|amount\na|2025-01-02|1\n"), "separated by '|'"),
    ("unquoted-decimal-comma", _text(HEADER + "a,2025-01-02,1,5\n"), "more or fewer fields"),
    # Huge fields
    ("1mb-timestamp", _text(HEADER + "a," + "9" * MB + ",1\n"), "(1000000 characters)"),
    ("1mb-amount", _text(HEADER + "a,2025-01-02," + "x" * MB + "\n"), "(1000000 characters)"),
    ("1mb-header", _text("y" * MB + ",timestamp,amount\n" + ROW_OK), "(1000000 characters)"),
    ("1mb-duplicate-id", _text(TX_HEADER + f"{'t' * MB},a,2025-01-02,1,\n{'t' * MB},b,2025-01-03,1,\n"), "appears 2"),
    ("1mb-row-extra-field", _text(HEADER + "a,2025-01-02,1," + "z" * MB + "\n"), "more or fewer fields"),
    # Mixed types
    ("text-amount", _text(HEADER + "a,2025-01-02,ten\n"), "non-numeric"),
    ("nan-amount", _text(HEADER + "a,2025-01-02,NaN\n"), "non-numeric, infinite"),
    ("inf-amount", _text(HEADER + "a,2025-01-02,inf\n"), "non-numeric, infinite"),
    ("minus-infinity-amount", _text(HEADER + "a,2025-01-02,-Infinity\n"), "non-numeric, infinite"),
    ("overflowing-amount", _text(HEADER + "a,2025-01-02,1e400\n"), "non-numeric, infinite"),
    ("negative-amount", _text(HEADER + "a,2025-01-02,-0.01\n"), "negative amount"),
    ("text-items", _text("customer_id,timestamp,amount,items\na,2025-01-02,1,many\n"), "column items"),
    ("float-items", _text("customer_id,timestamp,amount,items\na,2025-01-02,1,2.5\n"), "column items"),
    ("negative-items", _text("customer_id,timestamp,amount,items\na,2025-01-02,1,-3\n"), "column items"),
    ("blank-customer", _text(HEADER + "  ,2025-01-02,1\n"), "empty customer_id"),
    ("blank-transaction-id", _text(TX_HEADER + ",a,2025-01-02,1,\n"), "empty transaction_id"),
    # Duplicate transaction ids
    ("duplicate-in-file", _text(TX_HEADER + "t1,a,2025-02-02,1,\nt1,b,2025-02-03,1,\n"), "'t1' appears 2 times"),
    ("duplicate-of-lake", _text(TX_HEADER + "seed-1,a,2025-02-10,1,\n"), "already in the lake on 2024-06-01"),
    # Dates
    ("year-1", _text(HEADER + "a,0001-01-01,1\n"), "before 1678-01-01"),
    ("year-1677", _text(HEADER + "a,1677-06-01T00:00:00,1\n"), "before 1678-01-01"),
    ("year-9999", _text(HEADER + "a,9999-12-31T23:59:59,1\n"), "from 2262-01-01 on"),
    ("year-10000", _text(HEADER + "a,10000-01-01,1\n"), "from 2262-01-01 on"),
    ("epoch-seconds", _text(HEADER + "a,0,1\n"), "not parsable"),
    ("empty-date", _text(HEADER + "a,,1\n"), "(first: empty)"),
    ("day-32", _text(HEADER + "a,2025-01-32,1\n"), "not parsable"),
    # Rows and columns
    ("quoted-newline-extra-column", _text(HEADER[:-1] + ',note\na,2025-01-02,1,"two\nlines"\n'), "more or fewer"),
    ("quoted-newline-id", _text(HEADER + '"a\nb",2025-01-02,1\n'), "more or fewer fields"),
    ("row-with-extra-field", _text(HEADER + "a,2025-01-02,1,5,6\n"), "more or fewer fields"),
    ("row-missing-field", _text(HEADER + "a,2025-01-02\n"), "more or fewer fields"),
    ("missing-column", _text("customer_id,timestamp\na,2025-01-02\n"), "missing column(s) amount"),
    ("renamed-columns", _text("customer,ts,total\na,2025-01-02,1\n"), "missing column(s) customer_id, timestamp"),
    ("duplicate-header", _text("customer_id,timestamp,amount,amount\na,2025-01-02,1,2\n"), "missing column(s) amount"),
    ("empty-file", _text(""), "found: none"),
    ("header-only", _text(HEADER), "no rows"),
    ("wrong-suffix", _text(HEADER + ROW_OK, "tx.xlsx"), "use a .csv or .parquet file"),
    # Parquet
    ("parquet-truncated", _parquet(_good_table, lambda b: b[: len(b) // 2]), "could not be read"),
    ("parquet-footer-kept", _parquet(_good_table, lambda b: b[:100] + b[-2000:]), "could not be"),
    ("parquet-corrupt-pages", _parquet(_good_table, _flip_middle), "could not be ingested"),
    ("parquet-garbage", _bytes(b"PAR1" + b"\x07" * 64 + b"PAR1", "tx.parquet"), "could not be read"),
    ("parquet-empty", _bytes(b"", "tx.parquet"), "could not be read"),
    ("parquet-csv-inside", _bytes((HEADER + ROW_OK).encode(), "tx.parquet"), "could not be read"),
    (
        "parquet-bool-timestamp",
        _parquet(pa.table({"customer_id": ["a"], "timestamp": [True], "amount": [1.0]})),
        "not parsable",
    ),
    (
        "parquet-int-timestamp",
        _parquet(pa.table({"customer_id": ["a"], "timestamp": [1735689600], "amount": [1.0]})),
        "not parsable",
    ),
    (
        "parquet-year-1",
        _parquet(
            pa.table(
                {
                    "customer_id": ["a"],
                    "timestamp": pa.array([dt.datetime(1, 1, 1)], pa.timestamp("us")),
                    "amount": [1.0],
                }
            )
        ),
        "before 1678-01-01",
    ),
    (
        "parquet-date-9999",
        _parquet(pa.table({"customer_id": ["a"], "timestamp": pa.array([dt.date(9999, 12, 31)]), "amount": [1.0]})),
        "from 2262-01-01 on",
    ),
    (
        "parquet-struct-id",
        _parquet(pa.table({"customer_id": [{"x": 1}], "timestamp": ["2025-01-02"], "amount": [1.0]})),
        "of type struct",
    ),
    (
        "parquet-list-amount",
        _parquet(pa.table({"customer_id": ["a"], "timestamp": ["2025-01-02"], "amount": [[1.0, 2.0]]})),
        "of type array",
    ),
    (
        "parquet-text-amount",
        _parquet(pa.table({"customer_id": ["a"], "timestamp": ["2025-01-02"], "amount": ["lots"]})),
        "non-numeric",
    ),
    (
        "parquet-null-amount",
        _parquet(
            pa.table({"customer_id": ["a"], "timestamp": ["2025-01-02"], "amount": pa.array([None], pa.float64())})
        ),
        "non-numeric",
    ),
    (
        "parquet-float-items",
        _parquet(pa.table({"customer_id": ["a"], "timestamp": ["2025-01-02"], "amount": [1.0], "items": [2.5]})),
        "column items",
    ),
    (
        "parquet-binary-id",
        _parquet(pa.table({"customer_id": [b"\xff\xfe\x00"], "timestamp": ["2025-01-02"], "amount": [1.0]})),
        "undecodable",
    ),
    # The customers file
    (
        "customers-latin1",
        _bytes(HEADER.encode() + b"q,2025-04-01,1\n", customers="customer_id,country\nq,España\n".encode("latin-1")),
        "undecodable",
    ),
    (
        "customers-year-1",
        _bytes(HEADER.encode() + b"q,2025-04-01,1\n", customers=b"customer_id,signup_date\nq,0001-01-01\n"),
        "before 1678",
    ),
    (
        "customers-utf16",
        _bytes(HEADER.encode() + b"q,2025-04-01,1\n", customers="customer_id\nq\n".encode("utf-16")),
        "UTF-16",
    ),
    (
        "customers-ragged",
        _bytes(HEADER.encode() + b"q,2025-04-01,1\n", customers=b"customer_id,country\nq,DE,x\n"),
        "more or fewer",
    ),
]


@pytest.mark.parametrize(("writer", "expected"), [pytest.param(w, e, id=name) for name, w, e in FILES])
def test_malformed_file_is_rejected_in_one_line_and_the_lake_unchanged(
    lake: Settings, tmp_path: Path, writer: Writer, expected: str
) -> None:
    transactions, customers = writer(tmp_path)
    message = rejected(lake, transactions, customers)
    assert expected in message, message


def test_a_missing_file_is_rejected_in_one_line(lake: Settings, tmp_path: Path) -> None:
    assert "does not exist" in rejected(lake, tmp_path / "nowhere.csv")


def test_valid_edge_cases_are_accepted_after_rejections(lake: Settings, tmp_path: Path) -> None:
    """What the contract allows, in one file: a UTF-8 BOM, CRLF line ends, quoted delimiters and
    quotes in ids, the first and last accepted instants, the epoch, an offset, whole-number items
    written as decimals, empty items, an extra column, a zero amount, a decimal amount in Parquet."""
    content = (
        "\ufefftransaction_id,customer_id,timestamp,amount,items,note\r\n"
        'e-1,"x,""y""",1678-01-01T00:00:00,0,3.0,\r\n'
        "e-2,00042,2261-12-31T23:59:59,1.5,,hello\r\n"
        "e-3,café,1970-01-01T00:00:00,2,1,\r\n"
        "e-4,  z  ,2025-03-01T23:30:00-02:00,1e2,0,\r\n"
    )
    path = tmp_path / "edges.csv"
    path.write_bytes(content.encode())
    parquet = tmp_path / "decimal.parquet"
    pq.write_table(
        pa.table(
            {
                "transaction_id": ["e-5"],
                "customer_id": ["a"],
                "timestamp": pd.to_datetime(["2025-03-05T00:30:00"]).tz_localize("Europe/Berlin"),
                "amount": pa.array([decimal.Decimal("9.99")], pa.decimal128(10, 2)),
            }
        ),
        parquet,
    )
    assert ingest(lake, path).transactions == 4
    assert ingest(lake, parquet).transactions == 1
    tx = lake_transactions(lake).set_index("transaction_id")
    assert tx.loc["e-1", "customer_id"] == 'x,"y"' and tx.loc["e-1", "items"] == 3
    assert tx.loc["e-2", "customer_id"] == "00042" and tx.loc["e-2", "items"] == 1
    assert tx.loc["e-3", "customer_id"] == "café"
    assert tx.loc["e-4", "customer_id"] == "z" and str(tx.loc["e-4", "date"]) == "2025-03-02"
    assert str(tx.loc["e-5", "date"]) == "2025-03-04" and tx.loc["e-5", "amount"] == pytest.approx(9.99)


# ---------------------------------------------------------------------------------------------------
# The command line


@pytest.mark.slow
def test_cli_prints_one_error_line_and_no_stack_trace(cli_runs: list[CliRun]) -> None:
    expected = {"utf16.csv": "UTF-16", "markup.csv": "[/],2025-01-02,1,5", "missing.csv": "does not exist"}
    for run in cli_runs:
        _, err = run.process.communicate(timeout=240)
        assert run.process.returncode == 2, (run.name, err[-2000:])
        lines = err.strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert errors == [lines[-1]], (run.name, lines[-20:])
        assert expected[run.name] in errors[0], errors[0]
        leaked = [leak for leak in LEAKS if leak in err]
        assert not leaked, (run.name, leaked, err[-2000:])
        tables = run.home / "warehouse"
        assert not tables.exists() or not any(tables.rglob("*.parquet")), run.name
