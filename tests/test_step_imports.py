"""Each pipeline step imports only the heavy libraries it uses.

A step is a new Python process (a kfp.local subprocess, a pod on a cluster) whose start-up is mostly
imports: Feast, MLflow, scikit-learn, Great Expectations and Spark take seconds each. A step may
import the libraries it uses and whatever those import themselves (MLflow imports pyspark and SciPy);
anything else from the list is a step paying for a library it never calls.

The imports are those of each component's body in components/kfp_components.py, run in a fresh
interpreter, so the test follows the components as they are written.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

# A fresh interpreter per step, importing its heavy libraries (two minutes): left out by `make test-fast`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("feast", "mlflow", "sklearn", "great_expectations", "pyspark", "kserve", "lightgbm", "kubernetes", "scipy")

# What loading each step's modules may import: the libraries it calls (some are imported only by the
# function that calls them, as noted); a library not here, nor imported by one here, must not be.
USES: dict[str, set[str]] = {
    "materialize_features": {"feast", "pyspark"},
    "build_training_set": {"feast", "pyspark"},
    "validate_data": {"great_expectations", "pyspark"},
    "train_candidates": {"mlflow", "sklearn", "scipy"},
    "train_realtime_model": {"mlflow", "sklearn", "scipy"},
    "evaluate_model": {"mlflow", "sklearn", "scipy"},
    "compare_with_champion": {"mlflow", "sklearn", "scipy"},
    "register_models": {"mlflow", "sklearn", "scipy"},
    "promote_to_champion": {"mlflow"},
    "deploy_release": {"mlflow"},  # the Kubernetes client only on a cluster, imported where it is called
    "score_customers": {"pyspark"},  # MLflow, imported by the function that loads the champion
    "publish_latest_scores": {"pyspark"},  # Feast, imported by the function that pushes
    "maintain_tables": {"pyspark"},
    "check_inference_drift": {"mlflow", "pyspark", "scipy"},
    "check_scoring_drift": {"mlflow", "pyspark", "scipy"},
    "check_prediction_drift": {"mlflow", "pyspark", "scipy"},
    "check_realised_accuracy": {"mlflow", "pyspark", "scipy"},
    "decide_retraining": {"pyspark"},  # the lake's newest date; no MLflow to decide
}


def _imported(code: str) -> set[str]:
    """The libraries of HEAVY that running `code` in a fresh interpreter leaves imported."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


@cache
def _brings(code: str) -> frozenset[str]:
    return frozenset(_imported(code))


def _step_imports() -> dict[str, str]:
    """Each component's name and the modules its body imports, as one import statement (steps that
    import the same modules share one interpreter start)."""
    tree = ast.parse((ROOT / "components" / "kfp_components.py").read_text())
    steps = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Name) and d.id == "component" for d in node.decorator_list
        ):
            modules = set()
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom) and statement.module:
                    modules.add(statement.module)
                elif isinstance(statement, ast.Import):
                    modules.update(alias.name for alias in statement.names)
            steps[node.name] = "import " + ", ".join(sorted(modules))
    return steps


def test_every_step_has_a_list() -> None:
    assert set(_step_imports()) == set(USES)


@pytest.mark.parametrize("step", sorted(USES))
def test_a_step_imports_only_what_it_uses(step: str) -> None:
    allowed = set().union(*(_brings(f"import {library}") for library in USES[step])) | USES[step]
    imported = set(_brings(_step_imports()[step]))
    assert imported <= allowed, f"{step} imports {sorted(imported - allowed)}, which it does not use"
    assert USES[step] <= imported, f"{step}'s list names {sorted(USES[step] - imported)}, which it no longer imports"


def test_compiling_the_pipelines_imports_no_step_library() -> None:
    """`propensity compile` (and a submit script) needs kfp (with its Kubernetes extension, which
    imports the Kubernetes client) and the settings only."""
    code = "import pipelines.training, pipelines.batch_scoring, pipelines.monitoring, propensity.cli"
    assert _imported(code) <= _brings("import kfp.kubernetes")
