"""Fuzzed command lines and pipeline parameters: each is either accepted as it is declared, or
refused with one clear line (exit code 2) before anything runs, is written or is submitted. Never a
traceback, never another exception."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.runner import _check_params, parse_params, pipeline_function, pipelines
from propensity.cli import build_parser, main
from propensity.errors import PropensityError

EXAMPLES = 1000
PIPELINES = sorted(pipelines())
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message.strip() and "Traceback" not in message and len(message) < 600


# Values as a user types them after `key=`: YAML scalars, lists and maps, dates good and bad, junk.
values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        ["2025-06-30", "2025-02-30", "1600-01-01", "9999-12-31", "yesterday", "[]", "[1, 2]", "{a: 1}", "true"]
    ),
    st.sampled_from(["[{learning_rate: 0.1}]", "[{}]", "[1]", "{model: x}", "- a\n- b", "{", "]", "'", "&a *a"]),
    st.text(alphabet="[]{}:,-'\"&*!|>#% \n\t", max_size=12),
    st.just("x" * 100_000),
)
keys = st.one_of(st.sampled_from(["as_of_date", "score_date", "training_window_days", "label_horizon_days"]), st.text())
pairs = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), st.text(max_size=20)), max_size=4)


@FUZZ
@given(pipeline=st.sampled_from(PIPELINES), given_pairs=pairs)
def test_fuzzed_pipeline_parameters_are_checked_before_anything_runs(pipeline: str, given_pairs: list[str]) -> None:
    func = pipeline_function(pipeline)
    try:
        params = parse_params(given_pairs)
        _check_params(func, params)
    except PropensityError as error:
        assert one_line(str(error)), str(error)[:300]
        return
    # Accepted: every value is what the pipeline declares.
    inputs = func.component_spec.inputs
    for name, value in params.items():
        kind = inputs[name].type
        assert kind != "Integer" or (type(value) is int and value >= 0), (name, value)
        assert kind != "String" or isinstance(value, str), (name, value)
        if name.endswith("_date") and value:
            pd.Timestamp(value)


def test_the_parameter_check_refuses_what_would_fail_a_step() -> None:
    training = pipeline_function("training")
    for bad in (
        ["as_of_date=2025-02-30"],
        ["as_of_date=[1, 2]"],
        ["training_window_days=-1"],
        ["training_window_days=true"],
        ["training_window_days=1.5"],
        ["candidates=[]"],
        ["candidates=[1]"],
        ["nope=1"],
    ):
        with pytest.raises(PropensityError):
            _check_params(training, parse_params(bad))
    _check_params(training, parse_params(["as_of_date=2025-06-30", "training_window_days=90"]))


COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
tokens = st.one_of(
    st.sampled_from(["--json", "--out", "--customers", "--days", "--drift", "--seed", "--param", "--version"]),
    st.sampled_from(["--port", "--workers", "--limit", "--cron", "--host", "--transactions", "-h=1", "--"]),
    st.sampled_from([*PIPELINES, "nope", "-1", "0", "1e9", "nan", "", " ", "\x00", "é", "x" * 5000]),
    st.text(max_size=10),
)


# What each command's work would call once its arguments are accepted. The fuzz stops there (a
# fuzzed `demo` must not run the demo): reaching one of these means the command line was accepted.
WORK = {
    "propensity.synthetic": ["generate"],
    "propensity.lake": ["ingest"],
    # After each pipeline command has checked its parameters: the local run, the KFP client, compiling.
    "kfp.local": ["init"],
    "pipelines.runner": ["kfp_client", "compile_all"],
    "serving.server": ["serve"],
    "components.deploy": ["deploy", "rollback"],
    "propensity.spark": ["executor_command"],
    "propensity.demo": ["run_demo"],
}


class Accepted(Exception):
    """Raised where a command would start its work."""


def run_main(argv: list[str], root: Path) -> tuple[int | str | None, str]:
    """`propensity ARGV` through the real entry point, in an empty work dir and home of its own."""
    import importlib

    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("PROPENSITY_HOME", str(root / "home"))
        patch.delenv("PROPENSITY_CONFIG", raising=False)
        for module, names in WORK.items():
            for name in names:
                patch.setattr(importlib.import_module(module), name, _accepted)
        with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
            try:
                code: int | str | None = main(argv)
            except SystemExit as exit:
                code = exit.code
            except Accepted:
                code = "accepted"
    return code, output.getvalue()


def _accepted(*args: Any, **kwargs: Any) -> Any:
    raise Accepted


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
@given(command=st.sampled_from(COMMANDS), argv=st.lists(tokens, max_size=5))
def test_fuzzed_command_lines_run_or_get_one_error_line_and_write_nothing(command: str, argv: list[str]) -> None:
    """Any command line through `main()`: accepted (it reaches its work), help (exit 0), or refused
    with exit code 2, one `error:` line, no traceback and nothing written."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        code, output = run_main([command, *argv], root)
        if code == "accepted":
            return
        assert code in (0, 2), (code, output[-500:])
        assert "Traceback" not in output, output[-2000:]
        if code == 2:
            errors = [line for line in output.splitlines() if "error:" in line]
            assert len(errors) == 1, output[-1000:]
        assert not any(root.iterdir()), f"written for a refused command: {sorted(root.rglob('*'))[:5]}"


def test_the_real_entry_point_refuses_what_the_parser_alone_would_pass(tmp_path: Path) -> None:
    """`main()` rejects unknown options for every command but `serve` (which passes them to KServe)."""
    assert run_main(["compile", "--no-such-option"], tmp_path)[0] == 2
    assert run_main(["run", "training", "--param", "training_window_days=-1"], tmp_path)[0] == 2
    assert run_main(["serve", "--max_threads", "4"], tmp_path)[0] == "accepted"
    assert run_main(["run", "training", "--param", "training_window_days=30"], tmp_path)[0] == "accepted"
    assert not any(tmp_path.iterdir())


@settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    option=st.sampled_from(["--customers", "--days", "--drift"]),
    value=st.one_of(
        st.integers(max_value=0).map(str),
        st.integers(min_value=10**7).map(str),
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 0 <= x <= 1).map(str),
        st.text(max_size=8).filter(lambda t: not t.strip().lstrip("-").isdigit()),
    ),
)
def test_malformed_generate_arguments_are_refused_before_writing(
    option: str, value: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if option == "--drift" and value.lstrip("-").isdigit() and 0 <= int(value) <= 1:
        return
    out = tmp_path_factory.mktemp("generate") / "out"
    code: Any
    output = io.StringIO()
    with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
        try:
            code = main(["generate", "--out", str(out), "--customers", "10", "--days", "10", f"{option}={value}"])
        except SystemExit as exit:
            code = exit.code
    assert code == 2, (option, value, code, output.getvalue()[:300])
    assert "Traceback" not in output.getvalue()
    assert not out.exists(), "nothing is written for a refused command"


def test_a_refused_run_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "home"))
    assert main(["run", "training", "--param", "training_window_days=-5"]) == 2
    assert not (tmp_path / "home" / "logs").exists() or not any((tmp_path / "home" / "logs").iterdir())
