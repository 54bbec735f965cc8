"""Free ports on 127.0.0.1 for the servers a local run starts (model server, Spark Connect, the
tests' services), and their stop."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

# Ports for servers started here are chosen below the kernel's ephemeral range (from which it picks
# every outgoing connection's source port): a server that binds seconds after its port was chosen
# (MLflow, KServe, SeaweedFS) would otherwise race every connection opened meanwhile.
PORTS_BELOW = 10_000  # the lowest port chosen


def ephemeral_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152  # the IANA dynamic range (macOS, BSD)


def free_port(low: int = PORTS_BELOW, high: int | None = None) -> int:
    """A port on 127.0.0.1 nothing listens on, in [low, high) (default: up to the ephemeral range),
    picked at random so that processes choosing at once rarely meet."""
    import random

    high = high or ephemeral_port_start()
    for _ in range(200):
        port = random.randrange(low, high)  # nosec B311: a port number, not a secret
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded range: any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], grace: float = 30) -> None:
    """SIGTERM (a server's clean shutdown), then SIGKILL after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
