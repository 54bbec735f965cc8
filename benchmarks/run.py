"""Performance harness: the demo loop's stage times and serving latency, as ratios to baselines.

Machines here are shared and noisy, so every figure that matters is a ratio to a baseline measured
in the same run:
* serving: median latency of the batch path and the real-time path / median latency of the
  server's liveness endpoint (same server, same client, interleaved);
* pipeline steps: wall time of each demo stage / wall time of the whole loop.

Usage: `python benchmarks/run.py [--customers N] [--requests N]`; prints a Markdown table that
`docs/benchmarks.md` records.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from components.batch_scoring import sample_latest_customers
from propensity.demo import DemoOptions, run_demo, running_server
from propensity.ports import free_port
from propensity.settings import get_settings


def median_ms(client: httpx.Client, method: str, path: str, bodies: list[dict] | None, n: int) -> float:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        if method == "GET":
            response = client.get(path)
        else:
            assert bodies is not None
            response = client.post(path, json=bodies[i % len(bodies)])
        samples.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = get_settings(home=Path(tmp) / "home")
        summary = run_demo(settings, DemoOptions(customers=args.customers))
        known = sample_latest_customers(settings, 200)
        batch_bodies = [{"instances": [{"customer_id": c}]} for c in known]
        new_bodies = [{"instances": [{"customer_id": f"bench-{i}", "country": "DE"}]} for i in range(200)]
        with running_server(settings, free_port()) as url, httpx.Client(base_url=url, timeout=30) as client:
            predict = "/v1/models/propensity:predict"
            median_ms(client, "POST", predict, batch_bodies, 20)  # warm up
            rounds = []
            for _ in range(3):  # interleave so background load hits all three alike
                live = median_ms(client, "GET", "/v2/health/live", None, args.requests // 3)
                batch = median_ms(client, "POST", predict, batch_bodies, args.requests // 3)
                realtime = median_ms(client, "POST", predict, new_bodies, args.requests // 3)
                rounds.append((live, batch, realtime))
    live, batch, realtime = (statistics.median(r[i] for r in rounds) for i in range(3))
    timings = summary["timings_seconds"]
    print(f"customers={args.customers}, transactions={summary['data']['transactions_after_new_data']}\n")
    print("| measure | value | ratio to baseline |\n|---|---|---|")
    print(f"| liveness endpoint (baseline) | {live:.2f} ms | 1.00 |")
    print(f"| predict, batch path | {batch:.2f} ms | {batch / live:.2f} |")
    print(f"| predict, real-time path | {realtime:.2f} ms | {realtime / live:.2f} |")
    total = timings["total"]
    for stage, seconds in timings.items():
        if stage != "total":
            print(f"| demo stage `{stage}` | {seconds:.1f} s | {seconds / total:.2f} of the loop |")
    print(f"| whole demo loop | {total:.1f} s | 1.00 |")


if __name__ == "__main__":
    main()
