"""A training set and its lineage, kept together in one Parquet file.

The step that builds a training set writes what it was built from (as-of date, window, label
horizon, snapshot dates, feature service and view versions, counts) into the file's schema metadata.
Every step that reads it (validation, training, evaluation, the gate) takes its parameters from
there, so they cannot disagree with the data, and each model version records them in MLflow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from propensity.errors import PropensityError

METADATA_KEY = b"propensity.training_set"


@dataclass(frozen=True)
class TrainingSetInfo:
    as_of_date: str  # the last day of data the run learns from (exclusive)
    training_window_days: int
    label_horizon_days: int
    snapshot_every_days: int
    first_snapshot: str
    last_snapshot: str  # the newest snapshot whose label window closes by as_of_date
    snapshots: int
    rows: int
    rows_before_cap: int  # labelled rows in the lake before the cap on training rows
    positives: int
    feature_service: str
    feature_views: dict[str, str] = field(default_factory=dict)  # name -> version (hash of its definition)
    # The snapshot of each table it read (transactions, customers, feature_snapshots): it can be
    # built again from them (components.features.rebuild_training_set) while they are kept.
    table_snapshots: dict[str, int] = field(default_factory=dict)
    max_rows: int = 0  # the cap on rows it was built with (training_max_rows)

    @property
    def label_rate(self) -> float:
        return self.positives / self.rows if self.rows else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "label_rate": round(self.label_rate, 6)}

    @classmethod
    def from_json(cls, text: str) -> TrainingSetInfo:
        values = json.loads(text)
        values.pop("label_rate", None)
        return cls(**values)


def write_training_set(frame: pd.DataFrame, path: Path, info: TrainingSetInfo) -> None:
    """Write rows and lineage together, atomically: a reader sees the old file or the whole new one."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(info.as_dict()).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table.replace_schema_metadata(metadata), partial)
    partial.replace(path)


def training_set_info(path: Path) -> TrainingSetInfo:
    """The lineage of a training set file; a clear error for a file the pipeline did not build."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise PropensityError(f"cannot read the training set {path}: {error}") from None
    if METADATA_KEY not in metadata:
        raise PropensityError(
            f"{path} carries no training-set lineage ({METADATA_KEY.decode()}): build it with the "
            "build_training_set step"
        )
    return TrainingSetInfo.from_json(metadata[METADATA_KEY].decode())


def read_training_set(path: Path) -> tuple[pd.DataFrame, TrainingSetInfo]:
    info = training_set_info(path)
    return pd.read_parquet(path), info
