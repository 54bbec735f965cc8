"""The demo loop at HEAD against the loop at an older commit (issue 28), from fresh clones of both
on this machine: the whole loop and each stage, and each step's process start-up (the import of
its component module, plus, for a step that uses Spark, a session to its first query), interleaved
(the order alternates each round), median of `--repeats`.

A step's Spark start-up is what the commit's own local run gives a step: at a commit whose
`propensity.spark` has `connect_server`, a client of the run's Spark Connect server (started once,
timed separately as "run's Spark server"; its first client pays for its first query, the later
steps of a run meet it warm); before, a local session of its own (a new JVM for every step).

Usage: `python benchmarks/loop.py [--against 87c6373] [--repeats 3] [--startup-only]`; prints a
Markdown table that `docs/benchmarks.md` records. Each clone is set up with its own `make setup`
(not timed). Needs git, make and a quiet machine (two demo loops per round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

IMPORT_PROBE = """
import importlib, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
open(sys.argv[-1], "w").write(str(time.perf_counter() - started))
"""

SPARK_PROBE = """
import sys, time
started = time.perf_counter()
from propensity.settings import get_settings
from propensity.spark import spark_session
spark_session(get_settings(), "propensity-startup-probe").range(1).count()
open(sys.argv[-1], "w").write(str(time.perf_counter() - started))
"""

# Started in the clone, as its local run starts it: prints the address, serves until stdin closes.
CONNECT_SERVER = """
import sys, time
started = time.perf_counter()
from propensity.settings import get_settings
from propensity.spark import connect_server
with connect_server(get_settings()) as url:
    print(url, time.perf_counter() - started, flush=True)
    sys.stdin.read()
"""


class Clone:
    def __init__(self, root: Path, label: str, rev: str) -> None:
        self.label, self.rev, self.dir = label, rev, root / label
        subprocess.run(["git", "clone", "-q", str(REPO), str(self.dir)], check=True)
        subprocess.run(["git", "-C", str(self.dir), "checkout", "-q", rev], check=True)
        subprocess.run(["make", "-s", "setup"], cwd=self.dir, check=True, stdout=subprocess.DEVNULL)
        self.python = str(self.dir / ".venv" / "bin" / "python")
        self.steps = sorted(
            p.stem for p in (self.dir / "components").glob("*.py") if p.stem not in ("__init__", "kfp_components")
        )
        self.spark_steps = {s for s in self.steps if "spark_session" in (self.dir / f"components/{s}.py").read_text()}
        self.connect = "def connect_server" in (self.dir / "propensity" / "spark.py").read_text()

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPENSITY_")}
        return {**env, "PROPENSITY_HOME": str(home), **extra}

    def probe(self, code: str, home: Path, *args: str, **extra: str) -> float:
        """Seconds the probe measured in a fresh process of the clone (written to a file: a module
        may write to stdout as it is imported)."""
        result = home / "probe-seconds"
        home.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [self.python, "-c", code, *args, str(result)],
            cwd=self.dir,
            env=self.env(home, **extra),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"{self.label}: probe {args} failed: {done.stderr.strip().splitlines()[-1:]}")
        return float(result.read_text())

    def startup(self, home: Path) -> dict[str, float]:
        """Seconds per step's start-up, and the run's one Spark server where the commit has one."""
        times = {f"import {s}": self.probe(IMPORT_PROBE, home, f"components.{s}") for s in self.steps}
        if self.connect:
            server = subprocess.Popen(
                [self.python, "-c", CONNECT_SERVER],
                cwd=self.dir,
                env=self.env(home),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert server.stdout is not None and server.stdin is not None
            url, seconds = server.stdout.readline().split()
            times["run's Spark server"] = float(seconds)
            try:
                first, later = (self.probe(SPARK_PROBE, home, PROPENSITY_SPARK_MASTER=url) for _ in range(2))
            finally:
                server.stdin.close()
                server.wait(timeout=120)
        else:
            times["run's Spark server"] = 0.0
            first, later = (self.probe(SPARK_PROBE, home) for _ in range(2))
        # The first step of a run meets a cold server (its first query compiles); the later ones a warm one.
        times["Spark to first query, a run's first step"] = first
        times["Spark to first query, each later step"] = later
        for step in self.steps:
            spark = later if step in self.spark_steps else 0.0
            times[f"step {step}"] = times[f"import {step}"] + spark
        return times

    def demo(self, home: Path) -> dict[str, object]:
        subprocess.run(
            [str(self.dir / ".venv" / "bin" / "propensity"), "demo"],
            cwd=self.dir,
            env=self.env(home),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (summary,) = home.rglob("demo-summary.json")
        return json.loads(summary.read_text())


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def story(summary: dict[str, object]) -> str:
    """The demo's decisions, to compare the two commits' stories: whether the drift retrained, what
    the gate decided, and the champion at the end."""
    monitoring = summary.get("monitoring") or {}
    retraining = summary.get("retraining") or {}
    assert isinstance(monitoring, dict) and isinstance(retraining, dict)
    return (
        f"retrain {monitoring.get('trigger_status')}, challenger {retraining.get('decision')}, "
        f"champion v{summary.get('champion_version')}"
    )


def median_table(rounds: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in rounds[0] if all(k in r for r in rounds)]
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", default="87c6373")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startup-only", action="store_true")
    args = parser.parse_args()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clones = [Clone(root, "old", args.against), Clone(root, "new", head.stdout.strip())]
        startup: dict[str, list[dict[str, float]]] = {c.label: [] for c in clones}
        loops: dict[str, list[dict[str, float]]] = {c.label: [] for c in clones}
        stories: dict[str, list[object]] = {c.label: [] for c in clones}
        for repeat in range(args.repeats):
            for clone in clones if repeat % 2 == 0 else clones[::-1]:
                home = root / f"home-{clone.label}-{repeat}"
                startup[clone.label].append(clone.startup(home / "probe"))
                if not args.startup_only:
                    started = time.monotonic()
                    summary = clone.demo(home / "demo")
                    timings = dict(summary["timings_seconds"])  # type: ignore[call-overload]
                    timings["wall"] = round(time.monotonic() - started, 1)
                    loops[clone.label].append(timings)
                    stories[clone.label].append(story(summary))
                print(f"round {repeat + 1}: {clone.label} done", file=sys.stderr, flush=True)
        old, new = clones
        print(
            f"`benchmarks/loop.py --against {args.against} --repeats {args.repeats}`: old = {old.rev}, "
            f"new = {new.rev}, median of {args.repeats}\n"
        )
        print("| measure | old | new | new / old |\n|---|---|---|---|")
        rows = [median_table(startup[c.label]) for c in clones]
        if not args.startup_only:
            rows = [
                {**r, **{f"loop {k}": v for k, v in median_table(loops[c.label]).items()}}
                for r, c in zip(rows, clones, strict=True)
            ]
        # Every measure of either commit: a stage one of them has and the other not shows "–".
        for key in [*rows[1], *(k for k in rows[0] if k not in rows[1])]:
            before, after = rows[0].get(key), rows[1].get(key)
            ratio = f"{after / before:.2f}" if before and after is not None else "–"
            print(f"| {key} | {seconds(before)} | {seconds(after)} | {ratio} |")
        if not args.startup_only:
            for clone in clones:
                print(f"\nthe story at {clone.rev}, per round: {stories[clone.label]}")


if __name__ == "__main__":
    main()
