"""Expected calibration error, defined once: training's evaluation and gate, the release report and
realised accuracy in monitoring all measure it this way, so a realised figure compares with a test
figure.

Scores fall into CALIBRATION_BINS equal-width bins over [0, 1] (a score of exactly 1 in the last);
the error is the row-weighted mean over bins of |mean score - observed rate|, which equals
sum over bins of |sum of scores - positives| / rows. The per-bin sums let Spark compute it where
the rows are (`calibration_bin_column`), and numpy on arrays in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import Column

CALIBRATION_BINS = 10


def calibration_bin(scores: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    return np.clip(np.floor(np.asarray(scores, dtype=float) * bins), 0, bins - 1).astype(int)


def calibration_bin_column(score: Column, bins: int = CALIBRATION_BINS) -> Column:
    """The same bin as `calibration_bin`, as a Spark column (pyspark imported only by its callers)."""
    from pyspark.sql import functions as sf

    return sf.least(sf.greatest(sf.floor(score * bins), sf.lit(0)), sf.lit(bins - 1))


def calibration_error_from_bins(rows: np.ndarray, positives: np.ndarray, score_sums: np.ndarray) -> float:
    """The error from each bin's row count, positives and sum of scores."""
    total = float(np.sum(rows))
    return float(np.sum(np.abs(np.asarray(score_sums, dtype=float) - positives)) / total) if total else 0.0


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float)
    index = calibration_bin(scores, bins)
    rows = np.bincount(index, minlength=bins)
    positives = np.bincount(index, weights=labels, minlength=bins)
    score_sums = np.bincount(index, weights=scores, minlength=bins)
    return calibration_error_from_bins(rows, positives, score_sums)
