"""The retraining decision on undrifted data: the steps of the training and monitoring pipelines,
in-process, on the demo's shop with its new days left undrifted. Kept apart from the whole-loop
module (tests/test_integration.py), which `make test` runs on one worker, so that this long test
runs beside the loop instead of after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from propensity.demo import DemoOptions
from propensity.settings import get_settings

pytestmark = pytest.mark.slow

# The demo's own shop (the options `make demo` runs).
OPTIONS = DemoOptions()


def test_no_drift_on_undrifted_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same steps as the pipelines, in-process: undrifted new data must not trigger a retrain.

    The shop is seasonal: between the champion's test snapshots (March) and the new days (May) it
    sells less, so how often people buy shifts for real and some activity columns drift. That is a
    true shift, but not one that calls for a new model: it stays below the dataset-level share, and
    who the customers are and what they buy do not move at all. (With the seasonality switched off
    no column drifts; measured when the seasonal shop came in.)
    """
    from urllib.parse import urlparse

    import mlflow

    from components.candidates import DEFAULT_CANDIDATES
    from components.features import build_training_set, materialize_features
    from components.registry import compare_with_champion, register_models
    from components.training import evaluate_run, train_candidates, train_realtime_model
    from monitoring.checks import REFERENCE_PROFILE, champion, champion_profile, champion_reference, check_scoring_drift
    from monitoring.drift import reference_profile
    from propensity.demo import write_and_ingest
    from propensity.tracking import promote

    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "home"))
    settings = get_settings()
    write_and_ingest(settings, OPTIONS.customers, OPTIONS.days, 0.0, OPTIONS.seed, "initial")
    materialize_features(settings)
    training_set = tmp_path / "training.parquet"
    build_training_set(settings, training_set)
    candidate = train_candidates(settings, training_set, DEFAULT_CANDIDATES[:1])[0]
    evaluate_run(settings, training_set, candidate.run_id)  # logs the drift reference with the model
    realtime = train_realtime_model(settings, training_set)
    decision, report = compare_with_champion(settings, training_set, candidate.run_id, realtime)
    assert "Release decision: promote" in report and "data:image/png;base64," in report
    registered = register_models(settings, candidate.run_id, realtime, decision)
    promote(settings, registered.batch.version, registered.realtime.version)
    # Prediction drift reads the stored profile alone; a champion without one (trained before
    # profiles were stored) falls back to a profile of its logged reference sample.
    model = champion(settings)
    stored = champion_profile(settings, model)
    assert stored == champion_reference(settings, model).profile and "score" in stored.columns
    artifact = Path(urlparse(mlflow.get_run(model.run_id).info.artifact_uri).path) / REFERENCE_PROFILE
    content = artifact.read_bytes()
    artifact.unlink()
    fallback = champion_profile(settings, model)
    assert fallback == reference_profile(champion_reference(settings, model).sample)
    artifact.write_bytes(content)  # the checks below judge against the stored profile

    new_days = {"customers": OPTIONS.customers, "days": OPTIONS.days + OPTIONS.new_days, "since_day": OPTIONS.days}
    write_and_ingest(settings, drift=0.0, seed=OPTIONS.seed, name="calm", **new_days)
    materialize_features(settings)
    calm, calm_result, _ = check_scoring_drift(settings)
    assert calm_result is not None and calm_result.current_rows >= settings.drift_min_rows
    assert not calm.holds and calm_result.drifted_share < settings.drift_share_threshold, calm
    threshold = 0.1  # Evidently's default per-column distance threshold (Wasserstein normed; Jensen-Shannon)
    untouched = ("country", "channel", "avg_order_value", "avg_items")
    assert all(calm_result.columns[name].distance < threshold for name in untouched), calm

    # The same days again, drifted: they replace the calm ones.
    write_and_ingest(settings, drift=OPTIONS.drift, seed=OPTIONS.seed, name="drift", **new_days)
    materialize_features(settings)
    drifted, drifted_result, html = check_scoring_drift(settings)
    assert drifted.holds and drifted_result is not None
    assert drifted_result.drifted_share > calm_result.drifted_share
    assert "<html" in html.lower()
