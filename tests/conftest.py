"""Shared fixtures: every test gets its own PROPENSITY_HOME; small data keeps `make test` fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from propensity.settings import Settings, get_settings

# Quiet, deterministic runs of the real libraries.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    monkeypatch.setenv("PROPENSITY_HOME", str(home))
    return get_settings()
