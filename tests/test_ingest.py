"""Bring-your-own data: validated completely (by Spark) before anything is written; days append."""

import re
from pathlib import Path

import pandas as pd
import pytest

from propensity.cli import main
from propensity.errors import PropensityError
from propensity.lake import CUSTOMERS, TRANSACTIONS, ingest, lake_changes
from propensity.settings import Settings, get_settings
from propensity.tables import load_table
from tests.gates import gated_script, release_together

# Starts Spark (ingest): left out by `make test-fast`.
pytestmark = pytest.mark.slow


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "tx.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def lake_table(settings: Settings, name: str) -> pd.DataFrame:
    """A lake table read whole through PyIceberg (small test data); empty before its first write."""
    table = load_table(settings, name)
    return table.scan().to_pandas() if table is not None else pd.DataFrame()


def lake_transactions(settings: Settings) -> pd.DataFrame:
    frame = lake_table(settings, TRANSACTIONS)
    return frame.sort_values(["timestamp", "transaction_id"]).reset_index(drop=True)


def lake_customers(settings: Settings) -> pd.DataFrame:
    frame = lake_table(settings, CUSTOMERS)
    assert len(frame)
    return frame.sort_values("customer_id").reset_index(drop=True)


def lake_is_empty(settings: Settings) -> bool:
    """No lake table and no table file: nothing was written."""
    files = [p for p in (settings.data_root / "warehouse").rglob("*") if p.is_file()]
    return load_table(settings, TRANSACTIONS) is None and load_table(settings, CUSTOMERS) is None and not files


def error_line(err: str) -> str:
    """The one error line a failed command printed (progress lines may precede it)."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], lines
    return errors[0]


GOOD = pd.DataFrame(
    {
        "customer_id": ["a", "b", "a"],
        "timestamp": ["2025-01-02", "2025-01-03T10:00:00", "2025-02-01"],
        "amount": [10.0, 20.5, 7.0],
    }
)


def test_ingest_csv_derives_customers(settings: Settings, tmp_path: Path) -> None:
    result = ingest(settings, _write(tmp_path, GOOD))
    assert (result.transactions, result.days, result.customers_total) == (3, 3, 2)
    customers = lake_customers(settings).set_index("customer_id")
    assert sorted(customers.index) == ["a", "b"]
    assert customers.loc["a", "signup_date"] == pd.Timestamp("2025-01-02")
    assert set(customers["country"]) == {"unknown"}
    tx = lake_transactions(settings)
    assert len(tx) == 3 and sorted(tx["date"].astype(str).unique()) == ["2025-01-02", "2025-01-03", "2025-02-01"]
    assert tx["transaction_id"].is_unique


def test_ingest_parquet_with_configured_column_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROPENSITY_CUSTOMER_ID_COLUMN", "user")
    monkeypatch.setenv("PROPENSITY_TIMESTAMP_COLUMN", "ordered_at")
    monkeypatch.setenv("PROPENSITY_AMOUNT_COLUMN", "total")
    path = tmp_path / "orders.parquet"
    frame = GOOD.rename(columns={"customer_id": "user", "timestamp": "ordered_at", "amount": "total"})
    frame.assign(ordered_at=pd.to_datetime(frame["ordered_at"], format="mixed")).to_parquet(path)  # nanoseconds
    settings = get_settings()
    ingest(settings, path)
    tx = lake_transactions(settings)
    assert list(tx.columns)[:5] == ["transaction_id", "customer_id", "timestamp", "amount", "items"]
    assert tx["timestamp"].tolist() == list(pd.to_datetime(GOOD["timestamp"], format="mixed"))


def test_customer_ids_stay_exactly_as_written(settings: Settings, tmp_path: Path) -> None:
    frame = pd.DataFrame({"customer_id": ["00042", "42"], "timestamp": ["2025-01-02", "2025-01-02"], "amount": [1, 2]})
    path = tmp_path / "ids.csv"
    frame.to_csv(path, index=False)
    ingest(settings, path)
    assert sorted(lake_transactions(settings)["customer_id"]) == ["00042", "42"]
    assert sorted(lake_customers(settings)["customer_id"]) == ["00042", "42"]


def test_a_reingested_day_replaces_that_day_and_other_days_append(settings: Settings, tmp_path: Path) -> None:
    ingest(settings, _write(tmp_path, GOOD))
    changes_before = lake_changes(settings)
    # Next export: 2025-02-01 again (corrected amount) and a new day, 2025-02-02.
    later = pd.DataFrame(
        {"customer_id": ["a", "c"], "timestamp": ["2025-02-01T09:00:00", "2025-02-02"], "amount": [8.0, 3.0]}
    )
    result = ingest(settings, _write(tmp_path, later, "later.csv"))
    assert (result.days, result.customers_total, result.customers_changed) == (2, 3, 1)
    tx = lake_transactions(settings)
    assert len(tx) == 4  # 2 untouched days + the replaced day + the new day
    assert tx.loc[tx["date"].astype(str) == "2025-02-01", "amount"].tolist() == [8.0]
    # Only the touched days (and c's signup day) are marked changed again.
    changes = lake_changes(settings)
    assert changes["2025-01-02"] == changes_before["2025-01-02"]
    assert changes["2025-02-01"] > changes_before["2025-02-01"] and "2025-02-02" in changes
    # The same file again: nothing duplicates.
    ingest(settings, _write(tmp_path, later, "later.csv"))
    assert len(lake_transactions(settings)) == 4


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (GOOD.drop(columns="amount"), "missing column(s) amount"),
        (GOOD.assign(timestamp=["2025-01-02", "not a date", "2025-02-01"]), "not parsable timestamps"),
        (GOOD.assign(amount=[10.0, -3.0, 1.0]), "negative amount"),
        (GOOD.assign(amount=["1", "x", "2"]), "non-numeric"),
        (GOOD.assign(customer_id=["a", None, "b"]), "empty customer_id"),
        (GOOD.assign(transaction_id=["t1", "t2", "t1"]), "transaction_id 't1' appears 2 times"),
        (GOOD.iloc[0:0], "no rows"),
    ],
)
def test_bad_input_is_rejected_and_nothing_written(
    settings: Settings, tmp_path: Path, frame: pd.DataFrame, message: str
) -> None:
    with pytest.raises(PropensityError, match=re.escape(message)):
        ingest(settings, _write(tmp_path, frame))
    assert lake_is_empty(settings)


def test_failed_ingest_keeps_the_previous_lake(settings: Settings, tmp_path: Path) -> None:
    ingest(settings, _write(tmp_path, GOOD))
    before, customers_before = lake_transactions(settings), lake_customers(settings)
    with pytest.raises(PropensityError):
        ingest(settings, _write(tmp_path, GOOD.assign(amount=[1.0, -1.0, 1.0]), "bad.csv"))
    pd.testing.assert_frame_equal(lake_transactions(settings), before)
    pd.testing.assert_frame_equal(lake_customers(settings), customers_before)


def test_customers_file_must_cover_transactions(settings: Settings, tmp_path: Path) -> None:
    customers = _write(tmp_path, pd.DataFrame({"customer_id": ["a"], "country": ["DE"]}), "customers.csv")
    with pytest.raises(PropensityError, match="neither in the customers file nor in the lake"):
        ingest(settings, _write(tmp_path, GOOD), customers)


def test_customers_file_with_duplicates_is_rejected(settings: Settings, tmp_path: Path) -> None:
    customers = _write(tmp_path, pd.DataFrame({"customer_id": ["a", "b", "a"]}), "customers.csv")
    with pytest.raises(PropensityError, match="lists customer 'a' more than once"):
        ingest(settings, _write(tmp_path, GOOD), customers)


def test_cli_reports_one_line_and_exits_non_zero(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, GOOD.assign(amount=["x", "1", "2"]))
    assert main(["ingest", "--transactions", str(path)]) == 2
    assert "non-numeric" in error_line(capsys.readouterr().err)
    assert lake_is_empty(settings)


def test_cli_ingest_json_summary(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--transactions", str(_write(tmp_path, GOOD)), "--json"]) == 0
    assert '"transactions": 3' in capsys.readouterr().out


# An ingest held before its customers commit until told to go.
GATED_INGEST = gated_script(
    "propensity.lake",
    "replace_table",
    'from propensity.cli import main\n\nsys.exit(main(["ingest", "--transactions", sys.argv[3]]))',
)


@pytest.mark.parametrize("first_ever", [False, True], ids=["on-a-lake", "first-ever"])
def test_two_ingests_at_once_never_lose_each_others_customers(
    settings: Settings, tmp_path: Path, first_ever: bool
) -> None:
    """Both merged their new customers with the same customers snapshot (or with no customers table
    yet): the first commit lands, the second fails in one line with nothing written (a plain replace
    would drop the first one's customers), and its rerun lands with both."""
    if not first_ever:
        ingest(settings, _write(tmp_path, GOOD))
    inputs = {
        name: _write(
            tmp_path,
            pd.DataFrame({"customer_id": [f"{name}-1", f"{name}-2"], "timestamp": [day, day], "amount": [1.0, 2.0]}),
            f"{name}.csv",
        )
        for name, day in (("first", "2025-03-01"), ("second", "2025-03-02"))
    }
    runs = {name: [str(path)] for name, path in inputs.items()}
    finished = release_together(GATED_INGEST, runs, tmp_path, settings.as_env())
    codes = {name: run.code for name, run in finished.items()}
    assert sorted(codes.values()) == [0, 2], finished  # the command's exit code for an error
    loser = next(name for name, code in codes.items() if code == 2)
    line = error_line(finished[loser].err)
    assert "another run committed to the table customers at the same time" in line and "run it again" in line
    winner_days = {"first": "2025-03-01", "second": "2025-03-02"}
    earlier = set() if first_ever else {"2025-01-02", "2025-01-03", "2025-02-01"}
    assert set(lake_transactions(settings)["date"]) == earlier | {winner_days[name] for name in runs if name != loser}
    ingest(settings, inputs[loser])
    assert {"first-1", "first-2", "second-1", "second-2"} <= set(lake_customers(settings)["customer_id"])
    assert {"2025-03-01", "2025-03-02"} <= set(lake_transactions(settings)["date"])
