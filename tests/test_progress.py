"""Progress of long commands: plain lines with elapsed time off a terminal, pipeline tasks as details."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from pipelines.runner import _quiet_kfp_logs
from propensity.cli import build_parser
from propensity.progress import StepProgress


def test_plain_lines_show_steps_details_and_elapsed_time() -> None:
    out = io.StringIO()
    progress = StepProgress(Console(file=out, width=200), live=False)
    with progress.step("Training pipeline"):
        progress.detail("materialize-features")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert all(re.match(r"^\[\s*\d+\.\ds\] ", line) for line in lines), lines
    assert lines[0].endswith("Training pipeline")
    assert lines[1].endswith("Training pipeline: materialize-features")
    assert re.search(r"done: Training pipeline \(\d+\.\ds\)$", lines[2])


def test_live_display_ends_with_the_finished_step() -> None:
    out = io.StringIO()
    progress = StepProgress(Console(file=out, width=120, force_terminal=True), live=True)
    with progress.step("Batch scoring"):
        progress.detail("score-customers")
    assert "Batch scoring" in out.getvalue()
    assert "✓" in out.getvalue()


def test_pipeline_tasks_are_reported_as_kfp_local_starts_them(tmp_path: Path) -> None:
    seen: list[str] = []
    log = tmp_path / "run.log"
    with _quiet_kfp_logs(log, seen.append):
        # What kfp.local prints, colours included, when it starts a task.
        print("10:00:00.1 - INFO - Executing task \x1b[96m'materialize-features'\x1b[0m")
        print("step output that mentions nothing")
        print("10:00:09.2 - INFO - Executing task \x1b[96m'build-training-set'\x1b[0m")
    assert seen == ["materialize-features", "build-training-set"]
    assert "step output that mentions nothing" in log.read_text()


def test_help_speaks_of_the_product_not_of_files_users_do_not_have() -> None:
    text = build_parser().format_help()
    assert "propensity" in text and "README" in text
    assert "DESIGN" not in text and "shared/" not in text
