"""Raw data in the lake: the data contract, bring-your-own validation and atomic writes.

The lake holds two canonical tables: `customers` (customer_id, signup_date, country, channel) and
`transactions` (transaction_id, customer_id, timestamp, amount, items). Everything downstream reads
these, whether they came from `propensity generate` or from a user's own files.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from propensity.errors import PropensityError
from propensity.settings import Settings

CUSTOMER_COLUMNS = ["customer_id", "signup_date", "country", "channel"]
TRANSACTION_COLUMNS = ["transaction_id", "customer_id", "timestamp", "amount", "items"]
UNKNOWN = "unknown"


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file chosen by its suffix, with a clear error when it cannot be read."""
    if not path.is_file():
        raise PropensityError(f"{path} does not exist; pass the path of a CSV or Parquet file")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if path.suffix.lower() in {".csv", ".txt"}:
            return pd.read_csv(path)
    except (ValueError, OSError) as exc:  # pandas/pyarrow parse errors
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PropensityError(f"{path} could not be read: {first_line}") from exc
    raise PropensityError(f"{path} has suffix '{path.suffix}'; use a .csv or .parquet file")


def _require_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PropensityError(
            f"{what} is missing column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))}); "
            "rename them or set the PROPENSITY_*_COLUMN settings"
        )


def _parse_timestamps(values: pd.Series, what: str) -> pd.Series:
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna() & values.notna() | values.isna()
    if bad.any():
        example = values[bad].iloc[0]
        raise PropensityError(
            f"{what}: {int(bad.sum())} value(s) are not parsable timestamps (first: {example!r}); "
            "use ISO 8601 such as 2025-03-01T12:00:00"
        )
    return parsed.dt.tz_convert(None).astype("datetime64[ns]")


def normalize_transactions(raw: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Validate a user's transactions and map them onto the canonical columns."""
    if raw.empty:
        raise PropensityError("the transactions file has no rows; nothing to ingest")
    id_col, ts_col, amount_col = (
        settings.customer_id_column,
        settings.timestamp_column,
        settings.amount_column,
    )
    _require_columns(raw, [id_col, ts_col, amount_col], "the transactions file")
    if raw[id_col].isna().any():
        raise PropensityError(f"the transactions file has {int(raw[id_col].isna().sum())} empty {id_col} value(s)")
    amount = pd.to_numeric(raw[amount_col], errors="coerce")
    if amount.isna().any():
        example = raw.loc[amount.isna(), amount_col].iloc[0]
        raise PropensityError(f"column {amount_col} has non-numeric or empty values (first: {example!r})")
    if (amount < 0).any():
        raise PropensityError(
            f"column {amount_col} has {int((amount < 0).sum())} negative amount(s) "
            f"(first: {amount[amount < 0].iloc[0]}); "
            "remove refunds or net them out before ingesting"
        )
    tx = pd.DataFrame(
        {
            "customer_id": raw[id_col].astype(str),
            "timestamp": _parse_timestamps(raw[ts_col], f"column {ts_col}"),
            "amount": amount.astype("float64"),
            "items": pd.to_numeric(raw["items"], errors="coerce").fillna(1).astype("int64")
            if "items" in raw.columns
            else 1,
        }
    )
    if "transaction_id" in raw.columns:
        tx.insert(0, "transaction_id", raw["transaction_id"].astype(str))
    else:
        tx.insert(0, "transaction_id", [f"t-{i:09d}" for i in range(len(tx))])
    return tx.sort_values(["timestamp", "customer_id"], kind="stable").reset_index(drop=True)


def normalize_customers(raw: pd.DataFrame | None, transactions: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Validate a customers file, or derive customers from transactions when there is none."""
    first_purchase = transactions.groupby("customer_id")["timestamp"].min()
    if raw is None:
        customers = pd.DataFrame({"customer_id": first_purchase.index.astype(str)})
    else:
        if raw.empty:
            raise PropensityError("the customers file has no rows; leave it out to derive customers from transactions")
        _require_columns(raw, [settings.customer_id_column], "the customers file")
        customers = pd.DataFrame({"customer_id": raw[settings.customer_id_column].astype(str)})
        if customers["customer_id"].duplicated().any():
            dup = customers.loc[customers["customer_id"].duplicated(), "customer_id"].iloc[0]
            raise PropensityError(f"the customers file lists customer {dup!r} more than once")
        for column in ("country", "channel"):
            if column in raw.columns:
                customers[column] = raw[column].fillna(UNKNOWN).astype(str).to_numpy()
        if "signup_date" in raw.columns:
            customers["signup_date"] = _parse_timestamps(raw["signup_date"], "column signup_date").to_numpy()
        unknown = set(transactions["customer_id"]) - set(customers["customer_id"])
        if unknown:
            raise PropensityError(
                f"{len(unknown)} customer(s) in transactions are not in the customers file "
                f"(e.g. {sorted(unknown)[0]!r})"
            )
    for column in ("country", "channel"):
        if column not in customers.columns:
            customers[column] = UNKNOWN
    fallback = customers["customer_id"].map(first_purchase)
    if "signup_date" not in customers.columns:
        customers["signup_date"] = fallback
    # A customer with neither a signup date nor a purchase cannot be placed in time.
    customers["signup_date"] = customers["signup_date"].fillna(fallback)
    customers = customers.dropna(subset=["signup_date"])
    return customers[CUSTOMER_COLUMNS].sort_values("customer_id").reset_index(drop=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_lake(settings: Settings, customers: pd.DataFrame, transactions: pd.DataFrame) -> None:
    """Replace the lake's tables; each file is switched in one rename, never half written."""
    with atomic_path(settings.customers_path) as c_tmp, atomic_path(settings.transactions_path) as t_tmp:
        customers[CUSTOMER_COLUMNS].to_parquet(c_tmp, index=False)
        transactions[TRANSACTION_COLUMNS].to_parquet(t_tmp, index=False)


def require_lake(settings: Settings) -> None:
    if not settings.transactions_path.exists():
        raise PropensityError(
            f"no data in {settings.lake_dir}; run `propensity generate --out DIR` and `propensity ingest`, "
            "or `propensity demo`"
        )


def read_lake(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    require_lake(settings)
    return pd.read_parquet(settings.customers_path), pd.read_parquet(settings.transactions_path)


def last_data_date(settings: Settings) -> pd.Timestamp:
    """The day after the last transaction: the default `as_of_date` / `score_date` of every pipeline."""
    require_lake(settings)
    last = pd.read_parquet(settings.transactions_path, columns=["timestamp"])["timestamp"].max()
    return (last + pd.Timedelta(days=1)).normalize()


def ingest(
    settings: Settings, transactions_file: Path, customers_file: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate the user's files completely, then write the lake. Nothing is written on error."""
    transactions = normalize_transactions(read_table(transactions_file), settings)
    raw_customers = read_table(customers_file) if customers_file else None
    customers = normalize_customers(raw_customers, transactions, settings)
    write_lake(settings, customers, transactions)
    return customers, transactions
