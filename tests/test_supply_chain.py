"""No untrusted deserialisation: models load only as skops with our own trusted types, and no code
path unpickles, evaluates YAML or loads a model around that one loader.

The scans of the repository for secrets, known-vulnerable dependencies and security lint run in CI
as `make security` (they need the network for the vulnerability database); see docs/reliability.md.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from propensity.errors import PropensityError
from propensity.settings import Settings
from propensity.tracking import configure, is_trusted_model_type, load_sklearn_uri
from tests.http_stub import json_server

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["propensity", "components", "pipelines", "serving", "monitoring", "feature_repo"]
# Modules whose only purpose is to run code stored in bytes.
UNSAFE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "marshal", "shelve", "jsonpickle"}
# Calls that deserialise arbitrary objects (module attribute, function name).
UNSAFE_CALLS = {
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("torch", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("sio", "load"),
    ("skops.io", "load"),
}
# The one function allowed to hand a model file to MLflow's loader.
MODEL_LOADER = ("propensity/tracking.py", "load_sklearn_uri")


def _fitted() -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    return LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One MLflow store for the module: creating a SQLite store costs seconds."""
    return Settings(home=tmp_path_factory.mktemp("home"))


def _log(settings: Settings, **kwargs: object) -> str:
    configure(settings)
    with mlflow.start_run() as run:
        # Requirements given: inferring them loads the model in a subprocess (seconds).
        mlflow.sklearn.log_model(_fitted(), name="model", pip_requirements=["scikit-learn"], **kwargs)  # type: ignore[arg-type]
    return f"runs:/{run.info.run_id}/model"


def test_a_model_saved_as_training_saves_it_loads(tracking: Settings) -> None:
    uri = _log(tracking, skops_trusted_types=["sklearn.linear_model._logistic.LogisticRegression"])
    model = load_sklearn_uri(uri)
    assert model.predict_proba(np.zeros((1, 2))).shape == (1, 2)


@pytest.mark.parametrize("serialization_format", ["cloudpickle", "pickle"])
def test_a_pickled_model_is_refused(tracking: Settings, serialization_format: str) -> None:
    uri = _log(tracking, serialization_format=serialization_format)
    with pytest.raises(PropensityError, match=f"serialised as {serialization_format}, not skops"):
        load_sklearn_uri(uri)


def test_a_model_that_trusts_foreign_types_is_refused(tracking: Settings) -> None:
    """MLflow would pass the model's own allow-list to skops; ours decides."""
    uri = _log(tracking, skops_trusted_types=["sklearn.linear_model._logistic.LogisticRegression", "builtins.eval"])
    with pytest.raises(PropensityError, match=r"asks to trust builtins\.eval"):
        load_sklearn_uri(uri)


def test_trusted_types_are_the_learners_own() -> None:
    assert is_trusted_model_type("sklearn.pipeline.Pipeline")
    assert is_trusted_model_type("lightgbm.sklearn.LGBMClassifier")
    assert is_trusted_model_type("collections.OrderedDict")
    for name in ("builtins.eval", "os.system", "numpy.load", "sklearnx.Evil", "collections.UserDict"):
        assert not is_trusted_model_type(name), name


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _truthy(value: ast.expr) -> bool:
    return not (isinstance(value, ast.Constant) and not value.value)


def _findings(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    relative = path.relative_to(root).as_posix()
    found: list[str] = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]

    def inside(node: ast.AST) -> str:
        for function in functions:
            if function.lineno <= getattr(node, "lineno", 0) <= (function.end_lineno or 0):
                return function.name
        return ""

    for node in ast.walk(tree):
        where = f"{relative}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        owner, _, attr = name.rpartition(".")
        if (owner, attr) in UNSAFE_CALLS:
            found.append(f"{where} calls {name}")
        if name in ("yaml.load",) and not any(k.arg == "Loader" for k in node.keywords) and len(node.args) < 2:
            found.append(f"{where} calls yaml.load without a safe Loader")
        pickles = [k for k in node.keywords if k.arg == "allow_pickle"]
        if attr == "load" and owner in ("np", "numpy") and any(_truthy(k.value) for k in pickles):
            found.append(f"{where} calls {name} with allow_pickle")
        if attr == "load_model" and owner.startswith("mlflow") and (relative, inside(node)) != MODEL_LOADER:
            found.append(f"{where} loads a model around {MODEL_LOADER[1]}: {name}")
        if name in ("eval", "exec"):
            found.append(f"{where} calls {name}")
    return found


def test_no_code_path_deserialises_untrusted_bytes() -> None:
    findings = [f for path in _sources() for f in _findings(path)]
    assert not findings, "\n".join(findings)


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scan above must be able to fail."""
    bad = tmp_path / "propensity" / "tracking.py"  # even the loader's module, outside the loader
    bad.parent.mkdir()
    bad.write_text(
        "import pickle\nimport yaml\nimport numpy as np\nimport mlflow.sklearn\n"
        "def f(b, p):\n"
        "    pickle.loads(b)\n    yaml.load(b)\n    np.load(p, allow_pickle=True)\n"
        "    mlflow.sklearn.load_model(p)\n    eval(b)\n"
    )
    text = "\n".join(_findings(bad, tmp_path))
    for expected in ("imports pickle", "yaml.load without", "allow_pickle", "loads a model around", "calls eval"):
        assert expected in text, text


# ---------------------------------------------------------------------------------------------------
# The lock-file audit (.ci/audit.py), against a local server speaking OSV's query API.

AUDIT = ROOT / ".ci" / "audit.py"
LOCK = """idna==3.20 \\
    --hash=sha256:a7db850025b95ded1eae8a46181a1a6c56c92c96f0e2b005d9ff8dc0210cab44
six==1.17.0 \\
    --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274
"""


def _vuln(fixed: str | None) -> dict[str, object]:
    events: list[dict[str, str]] = [{"introduced": "0"}, *([{"fixed": fixed}] if fixed else [])]
    return {
        "id": "PYSEC-0000-1",
        "aliases": ["CVE-0000-0001"],
        "summary": "planted",
        "affected": [
            {"package": {"name": "six", "ecosystem": "PyPI"}, "ranges": [{"type": "ECOSYSTEM", "events": events}]}
        ],
    }


def _run_audit(tmp_path: Path, vulns_for_six: list[dict[str, object]], *extra: str) -> subprocess.CompletedProcess[str]:
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK)
    asked: list[str] = []

    def answer(handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, object]:
        query = json.loads(body)
        asked.append(query["package"]["name"])
        return 200, ({"vulns": vulns_for_six} if query["package"]["name"] == "six" and vulns_for_six else {})

    with json_server(answer) as url:
        done = subprocess.run(
            [
                sys.executable,
                str(AUDIT),
                "--lock",
                str(lock),
                "--service",
                "osv",
                "--osv-url",
                f"{url}/v1/query",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert sorted(asked) == ["idna", "six"], (asked, done.stdout, done.stderr)
    return done


def test_the_audit_fails_on_a_fixable_vulnerability(tmp_path: Path) -> None:
    done = _run_audit(tmp_path, [_vuln("1.17.1")])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "six==1.17.0: PYSEC-0000-1 (CVE-0000-0001) fixed in: 1.17.1" in done.stdout


def test_the_audit_reports_but_passes_a_vulnerability_without_a_fix(tmp_path: Path) -> None:
    done = _run_audit(tmp_path, [_vuln(None)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "six==1.17.0: PYSEC-0000-1 (CVE-0000-0001) fixed in: no fixed release" in done.stdout


def test_the_audit_passes_a_clean_lock(tmp_path: Path) -> None:
    done = _run_audit(tmp_path, [])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 pinned packages audited" in done.stdout


def test_an_unaudited_lock_is_reported_as_not_audited_never_ok() -> None:
    """Where the vulnerability service cannot be reached (as on this project's machines), pip-audit
    skips the packages: the verdict says NOT AUDITED, and only --allow-unaudited keeps it from failing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("audit", AUDIT)
    assert spec is not None and spec.loader is not None
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    skipped = {"skip_reason": "Dependency not found on PyPI and could not be audited: six (1.17.0)"}
    nothing = {"dependencies": [{"name": "six", "version": "1.17.0", **skipped}]}
    part = {"dependencies": [{"name": "idna", "version": "3.20", "vulns": []}, nothing["dependencies"][0]]}
    for report, what in ((nothing, "no package was audited"), (part, "1 of 2 packages")):
        lines, code = audit.verdict(report, "pypi", allow_unaudited=False)
        assert code == 3 and lines[-1].startswith(f"NOT AUDITED: {what}"), lines
        lines, code = audit.verdict(report, "pypi", allow_unaudited=True)
        assert code == 0 and lines[-1].startswith("NOT AUDITED") and not any(line.startswith("OK") for line in lines)
    lines, code = audit.verdict({"dependencies": part["dependencies"][:1]}, "pypi", allow_unaudited=False)
    assert code == 0 and lines[-1].startswith("OK: every pinned package audited")
