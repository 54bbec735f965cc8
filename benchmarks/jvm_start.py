"""A new process's Spark with and without the class archive `make setup` dumps (issue 28): the
command a user runs most (`propensity ingest`, a new process and JVM each time) and a bare session's
start to its first query, interleaved, median of `--repeats`.

Without the archive means the same jars through a jar cache of symbolic links: the archive's name is
a digest of the jars' paths, so that cache has none, and everything else is the same. Each run gets
a new PROPENSITY_HOME; the input is the test lake's shop (400 customers, 150 days), written once.

Usage: `python benchmarks/jvm_start.py [--repeats 3]`; prints the Markdown table docs/benchmarks.md
records. Needs `make setup` (which dumps the archive) and a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from propensity.jvm import class_path, jar_cache
from propensity.spark import class_archive
from propensity.synthetic import generate

SESSION = (
    "from propensity.settings import get_settings\n"
    "from propensity.spark import spark_session\n"
    "spark_session(get_settings(), 'jvm-start').range(1).count()\n"
)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    archive = class_archive()
    if archive is None or not archive.is_file():
        raise SystemExit("no class archive for this class path: run `make setup` first")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        links = root / "jars"
        links.mkdir()
        for jar in class_path():
            (links / jar.name).symlink_to(jar)
        data = generate(customers=400, days=150, seed=11)
        data.transactions.to_parquet(root / "tx.parquet", index=False)
        data.customers.to_parquet(root / "customers.parquet", index=False)
        cli = str(Path(sys.executable).with_name("propensity"))
        ingest = [
            cli,
            "ingest",
            "--transactions",
            str(root / "tx.parquet"),
            "--customers",
            str(root / "customers.parquet"),
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith("PROPENSITY_")}
        caches = {"with the archive": str(jar_cache()), "without": str(links)}
        times: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.repeats):
            order = list(caches) if round_ % 2 == 0 else list(reversed(caches))
            for label in order:
                for name, command in (
                    ("propensity ingest", ingest),
                    ("session to first query", [sys.executable, "-c", SESSION]),
                ):
                    home = root / f"home-{round_}-{label[:4]}-{name[:4]}"
                    env = {**base, "PROPENSITY_JARS": caches[label], "PROPENSITY_HOME": str(home)}
                    times.setdefault((name, label), []).append(timed(command, env))
    print(f"| median of {args.repeats}, seconds | with the archive | without | ratio |")
    print("|---|---:|---:|---:|")
    for name in ("propensity ingest", "session to first query"):
        with_, without = (statistics.median(times[(name, label)]) for label in caches)
        print(f"| {name} | {with_:.1f} | {without:.1f} | {with_ / without:.2f}x |")


if __name__ == "__main__":
    main()
