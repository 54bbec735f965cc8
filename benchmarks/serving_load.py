"""Serving under load: our predictor against a bare KServe model and a two-hop Feast transformer.

wrk (the Debian package) drives each server over loopback with 16 connections; every server is
pinned to core 0 and wrk to core 1 (`taskset`), one server worker each. One run holds every
arrangement, in interleaved rounds so background load hits them alike; figures are medians of the
rounds, and the verdicts are ratios within this run (machines here are shared and noisy):

* `constant`: the stock `kserve.Model` returning a constant (the baseline);
* `batch`: our predictor, one known customer per request (batch path);
* `realtime`: our predictor, one new customer per request (real-time path);
* `mixed100`: our predictor, 100 customers per request, half known and half new;
* `two-hop`: KServe's Feast transformer pattern, one known customer per request: a transformer
  server fetches the online features through the Feast SDK and calls a predictor server that picks
  the batch score or runs the real-time model.

It needs a trained, scored deployment: `--home DIR` with the settings in the environment (as after
`propensity demo`); without it, it runs the demo first. Usage:

    python benchmarks/serving_load.py [--home DIR] [--seconds 10] [--rounds 3] [--profile]

(Not named serving.py: a script's folder comes first on sys.path, and that name would hide the
`serving` package.) Prints a Markdown table for docs/benchmarks.md; `--profile` adds py-spy's top frames of our server
on each path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from propensity.demo import wait_until_ready

SERVER_CORE, CLIENT_CORE = "0", "1"
CONNECTIONS = 16

# --------------------------------------------------------------------------------------------------
# The comparison servers (run as `python benchmarks/serving_load.py server KIND --port P`)


def run_server(kind: str, port: int) -> None:
    import kserve
    from kserve import Model

    if kind == "constant":

        class Constant(Model):
            def __init__(self) -> None:
                super().__init__("constant")
                self.ready = True

            def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
                return {"predictions": [0.5]}

        model: Model = Constant()
    elif kind == "transformer":
        model = FeastTransformer()
    elif kind == "features-predictor":
        model = FeaturesPredictor()
    else:
        raise SystemExit(f"unknown server kind {kind}")
    model.load()
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


def _two_hop_classes() -> tuple[type, type]:
    from datetime import UTC, datetime, timedelta

    from kserve import Model

    from feature_repo.definitions import ONLINE_SERVICE
    from feature_repo.store import feature_store
    from propensity import features as F
    from propensity.settings import get_settings
    from propensity.tracking import load_scorer, served_realtime_model

    class Transformer(Model):
        """KServe's Feast transformer sample: preprocess = Feast SDK lookup, predict = forward."""

        def __init__(self) -> None:
            # KServe reads --predictor_host from the command line (its own parser), as in a cluster.
            super().__init__("propensity")

        def load(self) -> bool:
            self.store = feature_store(get_settings())
            self.service = self.store.get_feature_service(ONLINE_SERVICE)
            self.ready = True
            return True

        def preprocess(self, payload: Any, headers: Any = None) -> Any:
            rows = [{F.ENTITY: i["customer_id"]} for i in payload["instances"]]
            online = self.store.get_online_features(features=self.service, entity_rows=rows).to_dict()
            return {"instances": [{k: v[j] for k, v in online.items()} for j in range(len(rows))]}

    class Predictor(Model):
        def __init__(self) -> None:
            super().__init__("propensity")

        def load(self) -> bool:
            settings = get_settings()
            ref = served_realtime_model(settings)
            assert ref is not None
            self.scorer = load_scorer(ref, F.REALTIME_MODEL_FEATURES)
            self.version = ref.version
            self.max_age = timedelta(hours=settings.score_max_age_hours)
            self.ready = True
            return True

        def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            now = datetime.now(UTC)
            out = []
            for row in payload["instances"]:
                stamp = row.get("scored_at")
                if row.get("score") is not None and stamp and now - datetime.fromisoformat(stamp) <= self.max_age:
                    out.append({"customer_id": row[F.ENTITY], "score": row["score"], "source": "batch"})
                else:
                    columns = {c: [row.get(c)] for c in F.REALTIME_MODEL_FEATURES}
                    score = float(self.scorer.score(columns, 1)[0])
                    out.append({"customer_id": row[F.ENTITY], "score": score, "source": "realtime"})
            return {"predictions": out}

    return Transformer, Predictor


def FeastTransformer() -> Any:
    return _two_hop_classes()[0]()


def FeaturesPredictor() -> Any:
    return _two_hop_classes()[1]()


# --------------------------------------------------------------------------------------------------
# Load generation


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def write_script(directory: Path, name: str, bodies: list[dict[str, Any]]) -> Path:
    path = directory / f"{name}.lua"
    path.write_text(WRK_SCRIPT % ",\n".join(lua_string(json.dumps(b)) for b in bodies))
    return path


def parse_wrk(output: str) -> dict[str, float]:
    def latency_ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = latency_ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = latency_ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "failed": failed}


def wrk(url: str, script: Path, seconds: int) -> dict[str, float]:
    command = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"]
    command.append("--latency")
    out = subprocess.run([*command, "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    result = parse_wrk(out)
    if result["failed"]:
        raise SystemExit(f"{result['failed']:.0f} failed requests against {url}:\n{out}")
    return result


# --------------------------------------------------------------------------------------------------
# Servers under test


@contextmanager
def pinned_server(command: list[str], port: int, model: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_ready(process, f"http://127.0.0.1:{port}/v1/models/{model}", log, 180)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def profile(pid: int, url: str, script: Path, seconds: int, directory: Path) -> list[tuple[str, float]]:
    """py-spy samples of the server while wrk loads it, taken only while a thread holds the GIL (CPU,
    not waiting): the share of samples per innermost function."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = directory / "profile.txt"
    sampler = subprocess.Popen(
        [
            py_spy,
            "record",
            "--gil",
            "--format",
            "raw",
            "--rate",
            "200",
            "-d",
            str(seconds),
            "-o",
            str(raw),
            "-p",
            str(pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    wrk(url, script, seconds - 2)
    sampler.wait()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for part, (markers, excluded) in PARTS.items():
            if any(m in stack for m in markers) and not any(m in stack for m in excluded):
                inclusive[part] += int(count)
    return [(part, inclusive[part] / total) for part in PARTS]


# Where the server's CPU goes, as shares of GIL-holding samples that pass through each part (a
# sample can count in two parts: the online read is inside our predict).
PARTS: dict[str, tuple[list[str], list[str]]] = {
    "our predict (parse, read, score, answer, log hand-off)": (["PropensityModel.predict"], []),
    "  online-store read (redis.asyncio, value decoding)": (["RedisReader.read", "FeastReader"], []),
    "  real-time model (ONNX Runtime)": (["OnnxScorer.score", "PipelineScorer.score"], []),
    "KServe, FastAPI, uvicorn outside our predict (routing, decode, encode, metrics, logs)": (
        ["run_asgi", "RequestResponseCycle", "_SelectorSocketTransport", "EpollSelector"],
        ["PropensityModel.predict"],
    ),
    "  of which KServe's per-request log lines (trace, access)": (["Logger._log"], ["PropensityModel.predict"]),
    "inference-log writer thread (encode, fsync, publish)": (["InferenceLogger._run"], []),
}


# The path each row must be answered by, per instance of its requests ("constant" answers no path).
EXPECTED_SOURCES = {"batch": "batch", "two-hop": "batch", "realtime": "realtime"}


def check_paths(urls: dict[str, str], bodies: dict[str, list[dict[str, Any]]]) -> None:
    """Every request of each row once, before timing: the batch rows must be answered from the
    precomputed scores and the real-time row by the model (an old or unscored deployment would answer
    known customers in real time and the batch row would time the wrong path), the mixed row by both,
    half and half. A wrong answer ends the benchmark with what was seen."""
    import httpx

    with httpx.Client(timeout=30) as client:
        for name, requests in bodies.items():
            if name == "constant":
                continue
            seen: dict[str, int] = {}
            for body in requests:
                response = client.post(urls[name], json=body)
                response.raise_for_status()
                for prediction in response.json()["predictions"]:
                    seen[prediction["source"]] = seen.get(prediction["source"], 0) + 1
            expected = EXPECTED_SOURCES.get(name)
            wrong = {s: n for s, n in seen.items() if s != expected} if expected else {}
            if name == "mixed100" and seen.get("batch") != seen.get("realtime"):
                wrong = seen
            if wrong:
                raise SystemExit(f"the {name} row is answered by the wrong path ({seen}): it would not time {name}")


def prepared_deployment(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The deployment in `args.home` (a demo run into a fresh one when None), its settings exported
    for the servers, and up to 500 of its scored customers."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")

    from components.batch_scoring import sample_latest_customers
    from propensity.settings import get_settings

    if args.home is None:
        from propensity.demo import DemoOptions, run_demo

        args.home = Path(tempfile.mkdtemp()) / "home"
        run_demo(get_settings(home=args.home), DemoOptions(customers=args.customers, rescore=False))
    os.environ["PROPENSITY_HOME"] = str(args.home)
    settings = get_settings()
    os.environ.update(settings.as_env())  # the servers read the same settings
    known = sample_latest_customers(settings, 500)
    if not known:
        raise SystemExit(f"no scored customers in {args.home}: run `propensity demo` or the pipelines first")
    return settings, known


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("server")
    server.add_argument("kind")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--predictor_host", help="read by KServe's own parser")
    parser.add_argument("--home", type=Path)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.command == "server":
        run_server(args.kind, args.port)
        return
    _, known = prepared_deployment(args)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    bodies: dict[str, list[dict[str, Any]]] = {
        "constant": [{"instances": [{"customer_id": c}]} for c in known],
        "batch": [{"instances": [{"customer_id": c}]} for c in known],
        "realtime": [{"instances": [{"customer_id": f"new-{i}", "country": "DE"}]} for i in range(500)],
        "mixed100": [
            {
                "instances": [{"customer_id": c} for c in known[k : k + 50]]
                + [{"customer_id": f"new-{k}-{i}", "channel": "web"} for i in range(50)]
            }
            for k in range(0, 450, 50)
        ],
    }
    bodies["two-hop"] = bodies["batch"]
    scripts = {name: write_script(work, name, requests) for name, requests in bodies.items()}

    from propensity.ports import free_port

    me = [sys.executable, __file__, "server"]
    ports = {name: free_port() for name in ("constant", "ours", "transformer", "features")}
    log = work / "servers.log"
    urls = {
        "constant": f"http://127.0.0.1:{ports['constant']}/v1/models/constant:predict",
        "batch": f"http://127.0.0.1:{ports['ours']}/v1/models/propensity:predict",
        "two-hop": f"http://127.0.0.1:{ports['transformer']}/v1/models/propensity:predict",
    }
    urls["realtime"] = urls["mixed100"] = urls["batch"]
    with (
        pinned_server([*me, "constant", "--port", str(ports["constant"])], ports["constant"], "constant", log),
        pinned_server(
            [sys.executable, "-m", "propensity.cli", "serve", "--port", str(ports["ours"])],
            ports["ours"],
            "propensity",
            log,
        ) as ours,
        pinned_server(
            [*me, "features-predictor", "--port", str(ports["features"])], ports["features"], "propensity", log
        ),
        pinned_server(
            [
                *me,
                "transformer",
                "--port",
                str(ports["transformer"]),
                "--predictor_host",
                f"127.0.0.1:{ports['features']}",
            ],
            ports["transformer"],
            "propensity",
            log,
        ),
    ):
        check_paths(urls, bodies)  # each row times the path it names, or the benchmark stops
        for name in scripts:  # warm up every path
            wrk(urls[name], scripts[name], 2)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in scripts}
        for _ in range(args.rounds):
            for name in scripts:
                rounds[name].append(wrk(urls[name], scripts[name], args.seconds))
        profiles = {}
        if args.profile:
            for name in ("batch", "realtime", "mixed100"):
                profiles[name] = profile(ours.pid, urls[name], scripts[name], args.seconds + 2, work)
    result = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
        for name, runs in rounds.items()
    }
    report(result, args, profiles)


def report(result: dict[str, dict[str, float]], args: argparse.Namespace, profiles: dict[str, Any]) -> None:
    base, batch, realtime, two_hop = (result[k] for k in ("constant", "batch", "realtime", "two-hop"))
    print(
        f"wrk -t1 -c{CONNECTIONS} -d{args.seconds}s, {args.rounds} interleaved rounds, medians; servers on core "
        f"{SERVER_CORE}, wrk on core {CLIENT_CORE}, one worker each\n"
    )
    print("| arrangement | requests/s | p50 | p99 |\n|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms |")
    print("\n| target | reached | met |\n|---|---|---|")

    def row(label: str, value: float, ok: bool) -> None:
        print(f"| {label} | {value:.2f} | {'yes' if ok else 'no'} |")

    row("batch path requests/s vs constant (>= 0.9)", batch["rps"] / base["rps"], batch["rps"] >= 0.9 * base["rps"])
    row(
        "batch path p99 vs constant (<= 1.2)", batch["p99_ms"] / base["p99_ms"], batch["p99_ms"] <= 1.2 * base["p99_ms"]
    )
    row(
        "real-time requests/s vs batch (>= 0.45)",
        realtime["rps"] / batch["rps"],
        realtime["rps"] >= 0.45 * batch["rps"],
    )
    row(
        "real-time p99 vs batch (<= 2.5)",
        realtime["p99_ms"] / batch["p99_ms"],
        realtime["p99_ms"] <= 2.5 * batch["p99_ms"],
    )
    row("one hop vs two-hop requests/s (>= 2)", batch["rps"] / two_hop["rps"], batch["rps"] >= 2 * two_hop["rps"])
    for name, top in profiles.items():
        print(f"\nProfile of our server, {name} path (py-spy, GIL-holding samples through each part):\n")
        print("| part | share of CPU |\n|---|---|")
        for part, share in top:
            print(f"| {part} | {share:.0%} |")


if __name__ == "__main__":
    main()
