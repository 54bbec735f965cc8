"""Soak: our predictor at a fixed share of its maximum throughput for ten minutes on loopback.

Criteria (issue item "Soak"): no failed request, the server's RSS at the end within 10% of its RSS
after warm-up, and every answered instance in the inference log (logged == answered - drops, with
no drops at that load).

Steps, all in one run, with the server (`propensity serve`, one worker) pinned to core 0 and every
load generator to core 1 (`taskset`), as in serving_load.py, whose helpers this reuses:

1. the Python load generator's own ceiling: closed loop, 16 connections, against the stock
   `kserve.Model` returning a constant (serving_load.py's baseline);
2. the predictor's maximum throughput: wrk (the Debian package, `apt-get install wrk`;
   `-t1 -c16`), median of 3 runs, one customer per request, known and new customers alternating;
3. warm-up at the target rate (default 80% of that maximum), then the server's RSS (VmRSS of the
   server process and any children);
4. the soak at the target rate: an open-loop generator (a fixed schedule of send times, so a slow
   server makes latency grow instead of the rate drop; latency counts from the scheduled time, as
   wrk2 does; Debian has no wrk2), RSS sampled every 10 s. The generator uses aiohttp, which the
   lock file already holds (a dependency of kserve, mlflow and s3fs);
5. the drop counter from /metrics (if the server exposes one), then SIGTERM, which makes the server
   flush and publish its inference-log segment; then the soak's records counted in storage (and any
   left in the spool). Each run tags its requests: new customers get a per-run customer-id prefix,
   known customers a per-run `channel` (irrelevant to a batch answer), so exactly the soak's records
   are counted.

If 80% of the maximum is more than the Python generator can drive (90% of its ceiling), the
maximum used is the one that generator reaches against the predictor, and the report says so.

It needs a trained, scored deployment: `--home DIR` with the settings in the environment (as after
`propensity demo`); without it, it runs the demo first (2,000 customers). Usage:

    python benchmarks/soak.py [--home DIR] [--seconds 600] [--warmup 60] [--fraction 0.8]

Prints a Markdown section for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as a script: this folder is first on sys.path (benchmarks/ is not a package).
from serving_load import (
    CLIENT_CORE,
    CONNECTIONS,
    SERVER_CORE,
    free_port,
    pinned_server,
    prepared_deployment,
    write_script,
)
from serving_load import wrk as wrk_run

TIMEOUT_SECONDS = 10.0  # per request, as serving_load.py gives wrk
RSS_EVERY_SECONDS = 10.0
CEILING_SECONDS = 10
# Records the server could not log: dropped (queue full) or failed (spool not writable).
DROP_METRIC = re.compile(r'^propensity_inference_records_total\{outcome="(?:dropped|failed)"\}\s+([\d.e+-]+)', re.M)

# --------------------------------------------------------------------------------------------------
# Load generator (run as `python benchmarks/soak.py load ...` pinned to the client core)


async def generate(url: str, bodies: list[bytes], rate: float, seconds: float, connections: int) -> dict[str, Any]:
    """Open loop at `rate` requests/s for `seconds` (closed loop as fast as possible when rate is 0).
    Latency counts from the scheduled send time, so queueing behind a slow server shows in it."""
    import aiohttp

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0, "non_2xx": 0, "connection_errors": 0, "timeouts": 0, "not_sent": 0}
    statuses: dict[str, int] = {}
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    started = loop.time()
    deadline = started + seconds
    # Past this, requests still waiting for a connection are not sent: the server fell behind.
    give_up = deadline + 30.0

    async def send(session: aiohttp.ClientSession, k: int, at: float) -> None:
        counts["sent"] += 1
        try:
            async with session.post(url, data=bodies[k % len(bodies)], headers=headers) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            counts["timeouts"] += 1
            return
        except aiohttp.ClientError:
            counts["connection_errors"] += 1
            return
        latencies.append(loop.time() - at)
        if 200 <= status < 300:
            counts["ok"] += 1
        else:
            counts["non_2xx"] += 1
            statuses[str(status)] = statuses.get(str(status), 0) + 1

    async def open_worker(session: aiohttp.ClientSession) -> None:
        while (item := await queue.get()) is not None:
            k, at = item
            if loop.time() > give_up:
                counts["not_sent"] += 1
                continue
            await send(session, k, at)

    async def closed_worker(session: aiohttp.ClientSession, first: int) -> None:
        k = first
        while loop.time() < deadline:
            await send(session, k, loop.time())
            k += connections

    async def dispatch() -> None:
        total = int(rate * seconds)
        k = 0
        while k < total:
            due = min(total, int((loop.time() - started) * rate) + 1)
            while k < due:
                queue.put_nowait((k, started + k / rate))
                k += 1
            await asyncio.sleep(0.001)
        for _ in range(connections):
            queue.put_nowait(None)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if rate > 0:
            await asyncio.gather(dispatch(), *(open_worker(session) for _ in range(connections)))
        else:
            await asyncio.gather(*(closed_worker(session, i) for i in range(connections)))
    elapsed = loop.time() - started
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        **counts,
        "statuses": statuses,
        "elapsed_s": elapsed,
        "rps": counts["ok"] / seconds,
        "p50_ms": quantile(0.50),
        "p99_ms": quantile(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
    }


def load_main(args: argparse.Namespace) -> None:
    bodies = [json.dumps(b).encode() for b in json.loads(Path(args.bodies).read_text())]
    result = asyncio.run(generate(args.url, bodies, args.rate, args.seconds, args.connections))
    print(json.dumps(result))


def start_load(url: str, bodies: Path, rate: float, seconds: float) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "load", "--url", url, "--bodies", str(bodies)]
    command += ["--rate", str(rate), "--seconds", str(seconds), "--connections", str(CONNECTIONS)]
    return subprocess.Popen(["taskset", "-c", CLIENT_CORE, *command], stdout=subprocess.PIPE, text=True)


def finish_load(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"the load generator failed (exit {process.returncode})")
    return dict(json.loads(out))


# --------------------------------------------------------------------------------------------------
# The server's memory and CPU


def process_tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                stack.extend(int(c) for c in (task / "children").read_text().split())
    return pids


def rss_mib(pid: int) -> float:
    """VmRSS of the process and its children."""
    total_kib = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total_kib += int(match.group(1)) if match else 0
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


# --------------------------------------------------------------------------------------------------
# Inference records


def count_records(settings: Any, prefix: str, tag: str) -> tuple[int, int]:
    """The run's records published to storage, and those still in the local spool."""
    from propensity.storage import Storage
    from serving.inference_log import read_records

    def ours(record: dict[str, Any]) -> bool:
        return str(record.get("customer_id", "")).startswith(prefix) or record.get("channel") == tag

    published = sum(1 for r in read_records(Storage(settings)) if ours(r))
    spooled = 0
    for segment in Path(settings.inference_spool_dir).glob("*/*.jsonl"):
        for line in segment.read_text().splitlines():
            if line.strip() and ours(json.loads(line)):
                spooled += 1
    return published, spooled


def phase_bodies(directory: Path, name: str, known: list[str]) -> tuple[Path, list[dict[str, Any]], str, str]:
    """One customer per request, known and new alternating, tagged for this phase of this run."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    prefix = f"{tag}-new-"
    bodies: list[dict[str, Any]] = []
    for i, customer in enumerate(known):
        bodies.append({"instances": [{"customer_id": customer, "channel": tag}]})
        bodies.append({"instances": [{"customer_id": f"{prefix}{i}", "country": "DE"}]})
    path = directory / f"{name}.json"
    path.write_text(json.dumps(bodies))
    return path, bodies, prefix, tag


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("load")
    load.add_argument("--url", required=True)
    load.add_argument("--bodies", required=True)
    load.add_argument("--rate", type=float, required=True, help="requests/s; 0: closed loop, as fast as it can")
    load.add_argument("--seconds", type=float, required=True)
    load.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--home", type=Path)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--fraction", type=float, default=0.8)
    parser.add_argument("--max-seconds", type=int, default=20, help="length of each of the 3 wrk runs")
    args = parser.parse_args()
    if args.command == "load":
        load_main(args)
        return
    settings, known = prepared_deployment(args)
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    log = work / "servers.log"
    started_at = datetime.now(UTC)
    figures: dict[str, Any] = {"started": started_at.isoformat(timespec="seconds"), "home": str(args.home)}

    # 1. What the Python generator can drive at all (against the constant model).
    ceiling_bodies, *_ = phase_bodies(work, "ceiling", known)
    port = free_port()
    constant = [sys.executable, str(Path(__file__).with_name("serving_load.py")), "server", "constant"]
    with pinned_server([*constant, "--port", str(port)], port, "constant", log):
        url = f"http://127.0.0.1:{port}/v1/models/constant:predict"
        finish_load(start_load(url, ceiling_bodies, 0, 3))  # warm up
        generator_ceiling = finish_load(start_load(url, ceiling_bodies, 0, CEILING_SECONDS))
    figures["generator_ceiling_rps"] = generator_ceiling["rps"]

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/models/propensity:predict"
    serve = [sys.executable, "-m", "propensity.cli", "serve", "--port", str(port), "--workers", "1"]
    with pinned_server(serve, port, "propensity", log) as server:
        pid = server.pid  # taskset execs the server: this is its process
        # 2. The predictor's maximum: wrk, median of 3 runs.
        _, max_body_list, *_ = phase_bodies(work, "max", known)
        script = write_script(work, "max", max_body_list)
        wrk_run(url, script, 3)  # warm every path
        runs = [wrk_run(url, script, args.max_seconds) for _ in range(3)]
        wrk_max = statistics.median(r["rps"] for r in runs)
        figures["wrk_runs_rps"] = [r["rps"] for r in runs]
        figures["wrk_max_rps"] = wrk_max
        maximum, basis = wrk_max, "wrk"
        if args.fraction * wrk_max > 0.9 * generator_ceiling["rps"]:
            # The Python generator could not hold the target: use what it drives against the predictor.
            capped_bodies, *_ = phase_bodies(work, "capped", known)
            maximum = finish_load(start_load(url, capped_bodies, 0, args.max_seconds))["rps"]
            basis = "the Python generator, closed loop (wrk's maximum is beyond what it can drive)"
        target = args.fraction * maximum
        figures.update(max_rps=maximum, max_basis=basis, target_rps=target)

        # 3. Warm-up at the target rate, then the RSS to compare with.
        warm_bodies, *_ = phase_bodies(work, "warm", known)
        warm = finish_load(start_load(url, warm_bodies, target, args.warmup))
        figures["warmup"] = warm
        rss_warm = rss_mib(pid)

        # 4. The soak.
        soak_bodies, _, prefix, tag = phase_bodies(work, "soak", known)
        samples: list[tuple[float, float]] = [(0.0, rss_warm)]
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        generator = start_load(url, soak_bodies, target, args.seconds)
        while generator.poll() is None:
            time.sleep(0.5)
            if time.monotonic() - t0 >= len(samples) * RSS_EVERY_SECONDS:
                samples.append((time.monotonic() - t0, rss_mib(pid)))
        soak = finish_load(generator)
        wall = time.monotonic() - t0
        samples.append((wall, rss_mib(pid)))
        figures["server_cpu_share"] = (cpu_seconds(pid) - cpu0) / wall
        rss_end = samples[-1][1]

        # 5. The drop counter, then a clean stop (the server publishes its open segment).
        import httpx

        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        drops = sum(int(float(found)) for found in DROP_METRIC.findall(metrics))
    figures["server_exit"] = server.returncode
    published, spooled = count_records(settings, prefix, tag)
    figures.update(
        soak=soak,
        rss_warm_mib=rss_warm,
        rss_end_mib=rss_end,
        rss_samples=samples,
        drops=drops,
        published=published,
        spooled=spooled,
        seconds=args.seconds,
        warmup_seconds=args.warmup,
        fraction=args.fraction,
        max_seconds=args.max_seconds,
    )
    (work / "soak.json").write_text(json.dumps(figures, indent=1))
    report(figures)
    print(f"\n(raw figures: {work / 'soak.json'}; server log: {log})", file=sys.stderr)


def report(f: dict[str, Any]) -> None:
    soak = f["soak"]
    errors = soak["non_2xx"] + soak["connection_errors"] + soak["timeouts"] + soak["not_sent"]
    answered = soak["ok"]
    logged = f["published"] + f["spooled"]
    drops = f["drops"]
    change = (f["rss_end_mib"] - f["rss_warm_mib"]) / f["rss_warm_mib"]
    rss_min = min(r for _, r in f["rss_samples"])
    rss_max = max(r for _, r in f["rss_samples"])
    print(
        f"`propensity serve` (one worker) pinned to core {SERVER_CORE}, load generators pinned to core {CLIENT_CORE}, "
        f"{CONNECTIONS} connections, loopback.\n"
    )
    print("| figure | value |\n|---|---|")
    rows = [
        (
            "Python generator's ceiling (closed loop vs constant model)",
            f"{f['generator_ceiling_rps']:,.0f} requests/s",
        ),
        (
            f"predictor maximum, wrk -t1 -c{CONNECTIONS} -d{f['max_seconds']}s x 3 (median)",
            f"{f['wrk_max_rps']:,.0f} requests/s (runs: {', '.join(f'{r:,.0f}' for r in f['wrk_runs_rps'])})",
        ),
        ("maximum used", f"{f['max_rps']:,.0f} requests/s, from {f['max_basis']}"),
        ("target rate", f"{f['target_rps']:,.0f} requests/s ({f['fraction']:.0%} of the maximum)"),
        (
            "warm-up",
            f"{f['warmup_seconds']} s, {f['warmup']['ok']:,} answered, p99 {f['warmup']['p99_ms']:.1f} ms",
        ),
        ("soak duration", f"{f['seconds']} s (generator ran {soak['elapsed_s']:.0f} s)"),
        ("achieved rate", f"{answered / f['seconds']:,.1f} requests/s"),
        ("requests sent / answered 2xx", f"{soak['sent']:,} / {answered:,}"),
        (
            "errors (non-2xx, connection, timeout, not sent)",
            f"{errors} ({soak['non_2xx']}, {soak['connection_errors']}, {soak['timeouts']}, {soak['not_sent']})",
        ),
        ("latency p50 / p99 / max", f"{soak['p50_ms']:.1f} / {soak['p99_ms']:.1f} / {soak['max_ms']:.0f} ms"),
        ("server CPU during the soak", f"{f['server_cpu_share']:.0%} of one core"),
        ("RSS after warm-up", f"{f['rss_warm_mib']:,.1f} MiB"),
        ("RSS at the end", f"{f['rss_end_mib']:,.1f} MiB ({change:+.1%}); range {rss_min:,.1f} to {rss_max:,.1f} MiB"),
        (
            "inference records logged / answered",
            f"{logged:,} / {answered:,} ({f['published']:,} published, {f['spooled']:,} left in the spool)",
        ),
        (
            "drops",
            f"{drops:,}" if drops is not None else "not exposed on /metrics (see the note); logged vs answered decides",
        ),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    effective_drops = drops if drops is not None else answered - logged
    criteria = [
        ("0 errors", errors == 0, f"{errors}"),
        ("RSS at the end within 10% of RSS after warm-up", abs(change) <= 0.10, f"{change:+.1%}"),
        ("logged == answered - drops", logged == answered - (drops or 0), f"{logged:,} vs {answered - (drops or 0):,}"),
        (
            "drops == 0" + ("" if drops is not None else " (answered - logged, no counter exposed)"),
            effective_drops == 0,
            f"{effective_drops:,}",
        ),
    ]
    print("\n| criterion | value | result |\n|---|---|---|")
    for name, ok, value in criteria:
        print(f"| {name} | {value} | {'PASS' if ok else '**FAIL**'} |")
    print("\nRSS every 10 s (MiB): " + ", ".join(f"{r:.0f}" for _, r in f["rss_samples"]))


if __name__ == "__main__":
    main()
