"""The figures of the quality reports: calibration, lift, baselines, the release page."""

import re

import numpy as np
import pytest

from components import report as R
from propensity import features as F
from tests.test_training_logic import _frame


def test_calibration_error_tells_honest_probabilities_from_inflated_ones() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 1.0, 20_000)
    labels = (rng.random(len(p)) < p).astype(int)
    assert R.expected_calibration_error(labels, p) < 0.02
    inflated = np.sqrt(p)  # same ranking, not the same probabilities
    assert R.expected_calibration_error(labels, inflated) > 0.1
    assert R.quality(labels, inflated).auc == pytest.approx(R.quality(labels, p).auc, abs=1e-3)


def test_calibration_error_uses_equal_width_bins() -> None:
    """Scores 0.05 and 0.15 fall in different bins, 1.0 in the last: one bin of two rows off by 0.5."""
    labels = np.array([0, 1, 1, 0])
    scores = np.array([0.05, 0.15, 1.0, 0.95])
    # Bins: [0, .1) |0.05 - 0|, [.1, .2) |0.15 - 1|, [.9, 1] |1.95 - 1|: (0.05 + 0.85 + 0.95) / 4.
    assert R.quality(labels, scores).calibration_error == pytest.approx((0.05 + 0.85 + 0.95) / 4)


def test_cumulative_gains_and_top_decile_capture() -> None:
    labels = np.array([1] * 10 + [0] * 90)
    perfect = -np.arange(100.0)  # the ten buyers score highest
    gains = R.cumulative_gains(labels, perfect)
    assert gains["captured"].iloc[0] == 1.0 and gains["lift"].iloc[0] == pytest.approx(10.0)
    assert gains["captured"].iloc[-1] == 1.0
    backwards = R.cumulative_gains(labels, -perfect)
    assert backwards["captured"].iloc[0] == 0.0 and backwards["captured"].iloc[-1] == 1.0
    # A score that cannot tell anyone apart captures what random contact would, whatever the row order.
    constant = R.cumulative_gains(labels, np.zeros(100))
    assert constant["captured"].to_numpy() == pytest.approx(np.arange(1, 11) / 10)
    assert constant["lift"].to_numpy() == pytest.approx(np.ones(10))


def test_baselines_score_the_same_rows_as_probabilities() -> None:
    frame = _frame(n_dates=12, per_date=200)
    train, test = frame[frame[F.EVENT_TIMESTAMP] < frame[F.EVENT_TIMESTAMP].max()], frame.tail(200)
    scores = R.baseline_scores(train, test)
    assert set(scores) == {"recency rank", "frequency rank", "logistic regression on RFM"}
    for values in scores.values():
        assert len(values) == len(test) and ((values >= 0) & (values <= 1)).all()
    # The synthetic label depends on orders_90d: the frequency ranking and the RFM model see it.
    labels = test[F.LABEL].to_numpy()
    assert R.quality(labels, scores["frequency rank"]).auc > 0.6
    assert R.quality(labels, scores["recency rank"]).auc < R.quality(labels, scores["frequency rank"]).auc


def test_the_release_report_holds_the_decision_tables_and_charts() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    segments = rng.choice(np.array(["DE", "FR"]), 400)
    scores = {"challenger": labels * 0.5 + rng.random(400) * 0.5, "champion": rng.random(400)}
    page = R.release_report("Release decision: promote", "**Release: promote**", labels, segments, scores, "country")
    assert page.count("data:image/png;base64,") == 1 and "<table>" in page
    assert "<strong>Release: promote</strong>" in page
    assert ">DE<" in page and ">FR<" in page and "top-decile capture" in page
    aucs = dict(re.findall(r"<td>(challenger|champion)</td>\s*<td>([0-9.]+)</td>", page))
    assert float(aucs["challenger"]) > 0.9 > 0.6 > float(aucs["champion"])
