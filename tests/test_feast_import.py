"""Feast is imported without typeguard's import-time instrumentation (propensity/feast_import.py)
by every package of the product that uses it. That it still works is every Feast test's business
(they import Feast through these packages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# typeguard's instrumented methods call its checker; the plain ones do not.
PROBE = """
{imports}
from feast.feature_view import FeatureView
print("check_argument_types_internal" in FeatureView.__init__.__code__.co_names)
"""


def _instrumented(imports: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1] == "True"


def test_feast_alone_is_instrumented():
    """The probe sees typeguard's work: without the switch, Feast's classes are instrumented."""
    assert _instrumented("import feast")


@pytest.mark.parametrize(
    "imports",
    [
        "import components.features",  # the feature steps (and Spark's Python workers pushing online)
        "import serving.online",  # the predictor
        "import feature_repo.store",  # the Feast repo and its store
    ],
)
def test_product_packages_import_feast_uninstrumented(imports):
    assert not _instrumented(imports)


def test_switch_after_feast_changes_nothing():
    """Too late to matter once Feast is in: it leaves typeguard alone, and the classes as they were."""
    code = (
        "import feast, typeguard\n"
        "before = typeguard.typechecked\n"
        "from propensity.feast_import import prepare_feast_import\n"
        "prepare_feast_import()\n"
        "assert typeguard.typechecked is before"
    )
    assert _instrumented(code)
