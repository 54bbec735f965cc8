"""Bring-your-own data: validated completely before anything is written."""

import re
from pathlib import Path

import pandas as pd
import pytest

from propensity.cli import main
from propensity.errors import PropensityError
from propensity.lake import ingest, read_lake
from propensity.settings import Settings, get_settings


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "tx.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


GOOD = pd.DataFrame(
    {
        "customer_id": ["a", "b", "a"],
        "timestamp": ["2025-01-02", "2025-01-03T10:00:00", "2025-02-01"],
        "amount": [10.0, 20.5, 7.0],
    }
)


def test_ingest_csv_derives_customers(settings: Settings, tmp_path: Path) -> None:
    customers, _transactions = ingest(settings, _write(tmp_path, GOOD))
    assert sorted(customers["customer_id"]) == ["a", "b"]
    assert customers.set_index("customer_id").loc["a", "signup_date"] == pd.Timestamp("2025-01-02")
    lake_customers, lake_tx = read_lake(settings)
    assert len(lake_tx) == 3 and set(lake_customers["country"]) == {"unknown"}


def test_ingest_parquet_with_configured_column_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROPENSITY_CUSTOMER_ID_COLUMN", "user")
    monkeypatch.setenv("PROPENSITY_TIMESTAMP_COLUMN", "ordered_at")
    monkeypatch.setenv("PROPENSITY_AMOUNT_COLUMN", "total")
    path = tmp_path / "orders.parquet"
    GOOD.rename(columns={"customer_id": "user", "timestamp": "ordered_at", "amount": "total"}).to_parquet(path)
    _, transactions = ingest(get_settings(), path)
    assert list(transactions.columns) == ["transaction_id", "customer_id", "timestamp", "amount", "items"]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (GOOD.drop(columns="amount"), "missing column(s) amount"),
        (GOOD.assign(timestamp=["2025-01-02", "not a date", "2025-02-01"]), "not parsable timestamps"),
        (GOOD.assign(amount=[10.0, -3.0, 1.0]), "negative amount"),
        (GOOD.iloc[0:0], "no rows"),
    ],
)
def test_bad_input_is_rejected_and_nothing_written(
    settings: Settings, tmp_path: Path, frame: pd.DataFrame, message: str
) -> None:
    with pytest.raises(PropensityError, match=re.escape(message)):
        ingest(settings, _write(tmp_path, frame))
    assert not settings.lake_dir.exists() or not any(settings.lake_dir.iterdir())


def test_failed_ingest_keeps_the_previous_lake(settings: Settings, tmp_path: Path) -> None:
    ingest(settings, _write(tmp_path, GOOD))
    before = read_lake(settings)[1]
    with pytest.raises(PropensityError):
        ingest(settings, _write(tmp_path, GOOD.assign(amount=[1.0, -1.0, 1.0]), "bad.csv"))
    pd.testing.assert_frame_equal(read_lake(settings)[1], before)


def test_customers_file_must_cover_transactions(settings: Settings, tmp_path: Path) -> None:
    customers = _write(tmp_path, pd.DataFrame({"customer_id": ["a"], "country": ["DE"]}), "customers.csv")
    with pytest.raises(PropensityError, match="not in the customers file"):
        ingest(settings, _write(tmp_path, GOOD), customers)


def test_cli_reports_one_line_and_exits_non_zero(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, GOOD.assign(amount=["x", "1", "2"]))
    assert main(["ingest", "--transactions", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "non-numeric" in err and len(err.splitlines()) == 1
    assert not settings.transactions_path.exists()


def test_cli_ingest_json_summary(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--transactions", str(_write(tmp_path, GOOD)), "--json"]) == 0
    assert '"transactions": 3' in capsys.readouterr().out
