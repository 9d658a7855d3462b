"""Control API latency and throughput against the real portierd (run as root).

Run: .venv/bin/python bench/control_bench.py [--requests 3000] [--cycles 100]
Prints p50/p99 latency and requests/s for `status` and for a bind/release cycle, next
to a baseline measured in the same run: a bare ZeroMQ echo over ipc from another
process, i.e. the transport alone.  Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from lab import Lab  # noqa: E402
from labdaemon import Daemon  # noqa: E402

from portier.control import ControlClient  # noqa: E402

ECHO = """
import sys, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind(sys.argv[1])
print("ready", flush=True)
while True:
    sock.send_multipart(sock.recv_multipart())
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def report(label: str, samples: list[float], elapsed: float) -> float:
    p50, p99 = percentiles(samples)
    rate = len(samples) / elapsed
    print(f"{label:<34} p50 {p50 * 1000:6.3f} ms  p99 {p99 * 1000:6.3f} ms  {rate:8,.0f} /s")
    return p50


def echo_baseline(count: int) -> float:
    folder = tempfile.mkdtemp(prefix="portier-echo-")
    endpoint = f"ipc://{folder}/echo.sock"
    server = subprocess.Popen(
        [sys.executable, "-c", ECHO, endpoint], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(endpoint)
        payload = b"x" * 64
        samples = []
        start = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            sock.send(payload)
            sock.recv()
            samples.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        sock.close(linger=0)
        return report("baseline: zmq ipc echo", samples, elapsed)
    finally:
        server.terminate()
        server.wait(timeout=10)
        subprocess.run(["rm", "-rf", folder], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()
    baseline = echo_baseline(args.requests)
    lab = Lab(guests=1, radvd=False)
    lab.up()
    try:
        lab.ns(lab.proxy, "ip", "link", "add", "spare0", "type", "veth", "peer", "name", "spare1")
        daemon = Daemon(lab).start()
        with ControlClient(daemon.control_socket) as client:
            samples = []
            start = time.perf_counter()
            for _ in range(args.requests):
                t = time.perf_counter()
                client.call("status")
                samples.append(time.perf_counter() - t)
            status_p50 = report("status", samples, time.perf_counter() - start)
            binds, releases, cycles = [], [], []
            start = time.perf_counter()
            for _ in range(args.cycles):
                t0 = time.perf_counter()
                client.call("bind", interface="spare0")
                t1 = time.perf_counter()
                client.call("release", interface="spare0")
                t2 = time.perf_counter()
                binds.append(t1 - t0)
                releases.append(t2 - t1)
                cycles.append(t2 - t0)
            elapsed = time.perf_counter() - start
            report("bind (spawns a worker)", binds, elapsed)
            report("release", releases, elapsed)
            report("bind + release cycle", cycles, elapsed)
        print(f"status p50 / transport p50: {status_p50 / baseline:.1f}x")
        print("targets: status p99 <= 5 ms, >= 2,000 status requests/s")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
