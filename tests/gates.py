"""Writers in their own processes (each its Python and JVM), held just before a commit until all of
them are there, then released together: concurrent commits that really race."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

WAIT_SECONDS = 540  # for each to reach its commit, then for each to finish (CI runs two suites on two cores)


def gated_script(module: str, function: str, run: str) -> str:
    """Python source that replaces `module.function` by one that touches `<argv[1]>.ready` and waits for
    the file argv[2] before calling the real one, then runs `run` (which may use argv[3:])."""
    return f"""
import sys
import time
from pathlib import Path

import {module} as target

real = target.{function}


def gated(*args, **kwargs):
    Path(sys.argv[1] + ".ready").touch()
    while not Path(sys.argv[2]).exists():
        time.sleep(0.02)
    return real(*args, **kwargs)


target.{function} = gated
{run}
"""


@dataclass(frozen=True)
class Finished:
    code: int
    out: str
    err: str


def release_together(script: str, runs: dict[str, list[str]], folder: Path, env: dict[str, str]) -> dict[str, Finished]:
    """Start `script` once per run (its extra arguments), wait until every one is held at its commit,
    release them at once and wait for them to end."""
    go = folder / "go"
    full_env = {**os.environ, **env}
    processes = {}
    for name, args in runs.items():
        with (folder / f"{name}.out").open("wb") as out, (folder / f"{name}.err").open("wb") as err:
            argv = [sys.executable, "-c", script, str(folder / name), str(go), *args]
            processes[name] = subprocess.Popen(argv, env=full_env, stdout=out, stderr=err)

    def output(name: str) -> str:
        return (folder / f"{name}.err").read_text(errors="replace")[-3000:]

    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not all((folder / f"{name}.ready").exists() for name in runs):
            for name, process in processes.items():
                assert process.poll() is None, f"{name} ended before its commit:\n{output(name)}"
            assert time.monotonic() < deadline, "the writers never reached their commits"
            time.sleep(0.05)
        go.touch()
        codes = {name: process.wait(timeout=WAIT_SECONDS) for name, process in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
    return {
        name: Finished(code, (folder / f"{name}.out").read_text(errors="replace"), output(name))
        for name, code in codes.items()
    }
