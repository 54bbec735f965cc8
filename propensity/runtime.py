"""The real-time model's serving runtime, chosen when the model is trained.

The model MLflow stores is a scikit-learn Pipeline (one-hot encoded profile fields, numeric
passthrough, HistGradientBoostingClassifier). Scoring one row through it costs milliseconds: a
pandas frame, the column transformer, and one Cython call per tree. The same pipeline exported by
skl2onnx and run by ONNX Runtime scores a row in about ten microseconds.

ONNX Runtime evaluates trees in float32, so a value within float32 rounding of a split threshold
could take the other branch. The export is therefore checked when the model is trained: both
runtimes score the held-out rows, and ONNX is chosen only if no score differs by more than
`TOLERANCE`. The choice and the largest difference are recorded with the model; serving runs the
runtime that was chosen, and the sklearn pipeline otherwise.

Missing values are filled as `propensity.features.fill_missing_features` fills them in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from propensity import features as F

TOLERANCE = 1e-6
ONNX = "onnx"
SKLEARN = "sklearn"
Columns = Mapping[str, Sequence[Any]]


def _filled(values: Sequence[Any], column: str) -> list[Any]:
    if column in F.CATEGORICAL_FEATURES:
        return [F.UNKNOWN if v is None else v for v in values]
    default = F.FEATURE_DEFAULTS.get(column)
    return [default if v is None or v != v else v for v in values]  # v != v: NaN


class PipelineScorer:
    """The stored sklearn pipeline on a pandas frame."""

    runtime = SKLEARN

    def __init__(self, model: Any, features: list[str]) -> None:
        self.model = model
        self.features = features

    def score(self, columns: Columns, rows: int) -> np.ndarray:
        frame = pd.DataFrame({c: _filled(columns[c], c) for c in self.features})
        return np.asarray(self.model.predict_proba(frame)[:, 1])


class OnnxScorer:
    """The pipeline exported to ONNX: one float32 or string column tensor per feature."""

    runtime = ONNX

    def __init__(self, onnx_model: bytes, features: list[str]) -> None:
        self.onnx_model = onnx_model
        self.features = features
        self.output = "probabilities"
        self._open()

    def _open(self) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One request is a few rows: threads cost more than they save, and the server scales by
        # processes (KServe workers) instead.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(self.onnx_model, options, providers=["CPUExecutionProvider"])

    def __getstate__(self) -> dict[str, Any]:
        # A session cannot be pickled (KServe copies the model into each worker process): the
        # exported model can, and each process opens its own session.
        return {"onnx_model": self.onnx_model, "features": self.features, "output": self.output}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def score(self, columns: Columns, rows: int) -> np.ndarray:
        feed = {
            c: np.asarray(_filled(columns[c], c), dtype=object if c in F.CATEGORICAL_FEATURES else np.float32).reshape(
                rows, 1
            )
            for c in self.features
        }
        return np.asarray(self.session.run([self.output], feed)[0][:, 1], dtype=np.float64)


def export_onnx(model: Any, features: list[str]) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [
        (c, StringTensorType([None, 1]) if c in F.CATEGORICAL_FEATURES else FloatTensorType([None, 1]))
        for c in features
    ]
    classifier = model.steps[-1][1] if hasattr(model, "steps") else model
    onnx_model = to_onnx(
        model,
        initial_types=inputs,
        target_opset={"": 18, "ai.onnx.ml": 3},
        options={id(classifier): {"zipmap": False}},
    )
    return bytes(onnx_model.SerializeToString())


def choose_runtime(model: Any, features: list[str], check_rows: pd.DataFrame) -> tuple[bytes | None, float]:
    """The ONNX export of `model` if it scores `check_rows` within TOLERANCE of the pipeline (else
    None), and the largest difference seen (inf when the pipeline cannot be exported)."""
    try:
        exported = export_onnx(model, features)
    except Exception:  # skl2onnx has no converter for this model: serve the pipeline
        return None, float("inf")
    columns = {c: check_rows[c].tolist() for c in features}
    reference = PipelineScorer(model, features).score(columns, len(check_rows))
    fast = OnnxScorer(exported, features).score(columns, len(check_rows))
    difference = float(np.abs(fast - reference).max()) if len(check_rows) else float("inf")
    return (exported if difference <= TOLERANCE else None), difference


def smoke_check(scorer: PipelineScorer | OnnxScorer) -> None:
    """Raise unless a freshly loaded scorer gives one probability per row: a customer with nothing
    known, and one with typical values. Run before a server swaps a new model in."""
    columns: dict[str, list[Any]] = {}
    for column in scorer.features:
        typical: Any = F.UNKNOWN if column in F.CATEGORICAL_FEATURES else 3.0
        columns[column] = [None, typical]
    scores = np.asarray(scorer.score(columns, 2), dtype=float)
    if scores.shape != (2,) or not np.all(np.isfinite(scores)) or scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError(f"the model answered {scores.tolist()} to the smoke rows, not two probabilities")
