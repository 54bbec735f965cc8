"""Feature materialization and point-in-time training sets through Feast."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from feature_repo.definitions import ACTIVITY_VIEW, PROFILE_VIEW, SCORE_VIEW, TRAINING_SERVICE, source_paths
from feature_repo.store import feature_data_dir, feature_repo, feature_store
from propensity import features as F
from propensity.lake import atomic_path, last_data_date, read_lake, require_lake
from propensity.settings import Settings


def resolve_date(settings: Settings, value: str | None) -> pd.Timestamp:
    """A pipeline date parameter: an ISO date, or empty for the day after the last transaction."""
    if value:
        try:
            return pd.Timestamp(value).normalize()
        except ValueError as exc:
            raise ValueError(f"'{value}' is not a date; use YYYY-MM-DD") from exc
    return last_data_date(settings)


@dataclass(frozen=True)
class MaterializeResult:
    as_of_date: str
    snapshot_dates: int
    feature_rows: int
    customers: int


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def materialize_features(settings: Settings, as_of_date: str | None = None) -> MaterializeResult:
    """Compute feature snapshots into the offline store, apply the Feast repo, load the online store."""
    customers, transactions = read_lake(settings)
    as_of = resolve_date(settings, as_of_date)
    first = transactions["timestamp"].min().normalize()
    dates = F.training_snapshot_dates(
        as_of, settings.training_window_days, settings.label_horizon_days, settings.snapshot_every_days
    )
    dates = [d for d in dates if d > first] + [as_of]
    activity = F.activity_features(customers, transactions, dates)

    store = feature_store(settings)  # also creates the folders
    paths = source_paths(feature_data_dir(settings))
    if paths[ACTIVITY_VIEW].exists():  # keep snapshots of other dates (earlier scoring runs)
        previous = pd.read_parquet(paths[ACTIVITY_VIEW])
        previous = previous[~previous[F.EVENT_TIMESTAMP].isin(dates)]
        activity = pd.concat([previous, activity], ignore_index=True)
    _write_parquet(activity, paths[ACTIVITY_VIEW])
    _write_parquet(F.customer_profiles(customers), paths[PROFILE_VIEW])
    if not paths[SCORE_VIEW].exists():
        empty = pd.DataFrame(
            {
                F.ENTITY: pd.Series(dtype=str),
                F.EVENT_TIMESTAMP: pd.Series(dtype="datetime64[ns]"),
                "score": pd.Series(dtype=float),
                "model_version": pd.Series(dtype=str),
                "scored_at": pd.Series(dtype=str),
            }
        )
        _write_parquet(empty, paths[SCORE_VIEW])

    store.apply(feature_repo(settings).objects)  # type: ignore[arg-type]
    end = (as_of + pd.Timedelta(seconds=1)).to_pydatetime()
    start_activity = (as_of - pd.Timedelta(seconds=1)).to_pydatetime()
    store.materialize(start_date=start_activity, end_date=end, feature_views=[ACTIVITY_VIEW])
    start_profile = customers["signup_date"].min().to_pydatetime()
    store.materialize(start_date=start_profile, end_date=end, feature_views=[PROFILE_VIEW])
    return MaterializeResult(
        as_of_date=str(as_of.date()),
        snapshot_dates=len(dates),
        feature_rows=len(activity),
        customers=int((customers["signup_date"] < as_of).sum()),
    )


def historical_features(settings: Settings, entity_rows: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join of the training feature service onto (customer_id, event_timestamp) rows."""
    store = feature_store(settings)
    service = store.get_feature_service(TRAINING_SERVICE)
    frame = store.get_historical_features(entity_df=entity_rows, features=service).to_df()
    frame[F.EVENT_TIMESTAMP] = pd.to_datetime(frame[F.EVENT_TIMESTAMP], utc=True).dt.tz_convert(None)
    return F.fill_missing_features(frame).sort_values([F.EVENT_TIMESTAMP, F.ENTITY]).reset_index(drop=True)


def scoring_inputs(settings: Settings, as_of_date: str | None) -> tuple[pd.Timestamp, pd.DataFrame]:
    """Features of the known customers as of a date: what batch scoring scores and monitoring checks."""
    require_lake(settings)
    as_of = resolve_date(settings, as_of_date)
    customers = pd.read_parquet(settings.customers_path, columns=[F.ENTITY, "signup_date"])
    entities = pd.DataFrame(
        {F.ENTITY: customers.loc[customers["signup_date"] < as_of, F.ENTITY], F.EVENT_TIMESTAMP: as_of}
    )
    return as_of, F.known_customers(historical_features(settings, entities))


@dataclass(frozen=True)
class TrainingSetResult:
    rows: int
    positives: int
    first_snapshot: str
    last_snapshot: str
    feature_service: str


def build_training_set(
    settings: Settings, out_path: Path, as_of_date: str | None = None, training_window_days: int | None = None
) -> TrainingSetResult:
    """Labelled rows (customer, t) with features as known at t, for every t whose label is complete."""
    customers, transactions = read_lake(settings)
    as_of = resolve_date(settings, as_of_date)
    window = training_window_days or settings.training_window_days
    dates = F.training_snapshot_dates(as_of, window, settings.label_horizon_days, settings.snapshot_every_days)
    first = transactions["timestamp"].min().normalize()
    dates = [d for d in dates if d > first]
    if not dates:
        raise ValueError(
            f"the data starts {first.date()}: not enough history before {as_of.date()} for "
            f"{settings.label_horizon_days}-day labels; pass a later as_of_date"
        )
    entities = F.training_entities(customers, dates)
    entities[F.LABEL] = F.labels(entities, transactions, settings.label_horizon_days)
    frame = historical_features(settings, entities)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out_path, index=False)
    return TrainingSetResult(
        rows=len(frame),
        positives=int(frame[F.LABEL].sum()),
        first_snapshot=str(min(dates).date()),
        last_snapshot=str(max(dates).date()),
        feature_service=TRAINING_SERVICE,
    )


def as_dict(result: MaterializeResult | TrainingSetResult) -> dict[str, object]:
    return asdict(result)
