"""Portier against the wire and the other ways of joining two links, measured in one run.

Run as root: .venv/bin/python bench/compare_bench.py [--seconds 5] [--probes 15]

For each data path (plain veth pair = the wire; Linux bridge; kernel proxy_ndp with
forwarding; Portier's userspace path; Portier's kernel fast path) it builds fresh
network namespaces (deploy/lab.py), then measures guest -> router TCP throughput with
default offloads, 64-byte UDP packets/s, router -> guest ping RTT and the hop limit the
router sees.  Then neighbor-resolution time, the router's first ping to a guest it has
not resolved yet (its neighbor entry flushed before each probe), for Portier, ndppd and
kernel proxy_ndp (default proxy_delay and 0) beside the bridge and the wire.  Every
figure is also printed as a ratio to the wire measured in this same run.  Asserts
nothing; load is bounded (iperf3 -t SECONDS, a few pings).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from lab import ROUTER_ADDRESS, Lab, wait_for  # noqa: E402
from labdaemon import Daemon, GroupSpec  # noqa: E402

GUEST_ADDRESS = "2001:db8:1::101"


def build(kind: str) -> tuple[Lab, str, list[Callable[[], None]]]:
    """A lab for one data path; returns it, the namespace playing the guest, and cleanups."""
    if kind == "wire":
        lab = Lab(guests=0, radvd=False).up()
        lab.ns(lab.proxy, "ip", "-6", "addr", "add", f"{GUEST_ADDRESS}/64", "dev", "up0", "nodad")
        return lab, lab.proxy, []
    lab = Lab(guests=1, radvd=False).up()
    guest = lab.guest_list[0]
    lab.ns(guest.name, "ip", "-6", "addr", "add", f"{GUEST_ADDRESS}/64", "dev", "eth0", "nodad")
    stops: list[Callable[[], None]] = []
    proxy = lab.proxy
    if kind == "bridge":
        lab.ns(proxy, "ip", "link", "add", "br0", "type", "bridge")
        for port in ("up0", "vm1"):
            lab.ns(proxy, "ip", "link", "set", port, "master", "br0")
        lab.ns(proxy, "ip", "link", "set", "br0", "up")
    elif kind.startswith("proxy_ndp") or kind == "ndppd":
        lab.sysctl(proxy, "net.ipv6.conf.all.forwarding", "1")
        for port in ("up0", "vm1"):
            lab.sysctl(proxy, f"net.ipv6.conf.{port}.proxy_ndp", "1")
            delay = "80" if kind == "proxy_ndp default delay" else "0"
            lab.sysctl(proxy, f"net.ipv6.neigh.{port}.proxy_delay", delay)
        lab.ns(proxy, "ip", "-6", "route", "add", f"{GUEST_ADDRESS}/128", "dev", "vm1")
        lab.ns(proxy, "ip", "-6", "route", "add", f"{ROUTER_ADDRESS}/128", "dev", "up0")
        lab.ns(proxy, "ip", "-6", "neigh", "add", "proxy", ROUTER_ADDRESS, "dev", "vm1")
        if kind == "ndppd":
            config = lab.workdir / "ndppd.conf"
            config.write_text(
                f"proxy up0 {{\n  rule {GUEST_ADDRESS}/128 {{\n    iface vm1\n  }}\n}}\n"
            )
            lab.spawn(
                proxy,
                "ndppd",
                "-c",
                str(config),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            lab.ns(proxy, "ip", "-6", "neigh", "add", "proxy", GUEST_ADDRESS, "dev", "up0")
    elif kind.startswith("portier"):
        extra = "[fastpath]\nenabled = false" if kind == "portier userspace" else ""
        daemon = Daemon(lab, [GroupSpec("lan", "up0", ["vm1"])], extra=extra).start()
        stops.append(daemon.stop)
        if kind == "portier fast path":
            lab.wait_ping(guest.name, ROUTER_ADDRESS)
            lab.ping(lab.router, GUEST_ADDRESS)
            wait_for(lambda: daemon.call("fastpath")["neighbors"] >= 2, 10, "the fast path")
    return lab, guest.name, stops


def iperf(lab: Lab, client: str, udp: bool, seconds: int) -> float:
    server = lab.spawn(lab.router, "iperf3", "-s", "-1", "-J", stdout=subprocess.PIPE, text=True)
    wait_for(
        lambda: "LISTEN" in lab.ns(lab.router, "ss", "-ltn", "sport = :5201").stdout,
        5,
        "iperf3 listening",
    )
    argv = ["iperf3", "-6", "-c", ROUTER_ADDRESS, "-t", str(seconds), "-J"]
    if udp:
        argv += ["-u", "-b", "0", "-l", "64"]
    lab.ns(client, *argv, check=False, timeout=seconds + 30)
    output, _ = server.communicate(timeout=30)
    end = json.loads(output)["end"]
    if udp:
        summary = end["sum"]
        return (summary["packets"] - summary["lost_packets"]) / summary["seconds"]
    return end["sum_received"]["bits_per_second"] / 1e9


def ping_stats(lab: Lab) -> tuple[float, int]:
    result = lab.ping(lab.router, GUEST_ADDRESS, count=50, extra=("-i", "0.01"))
    average = float(re.search(r"= [\d.]+/([\d.]+)/", result.stdout).group(1))
    hops = int(re.search(r"ttl=(\d+)", result.stdout).group(1))
    return average, hops


def resolution_ms(lab: Lab, probes: int) -> float:
    times = []
    for _ in range(probes):
        lab.ns(lab.router, "ip", "-6", "neigh", "flush", "dev", "r0")
        result = lab.ping(lab.router, GUEST_ADDRESS, count=1, timeout_s=3)
        match = re.search(r"time=([\d.]+) ms", result.stdout)
        if match:
            times.append(float(match.group(1)))
        time.sleep(0.05)  # let stray answers of the previous probe settle
    return statistics.median(times) if times else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--probes", type=int, default=15)
    args = parser.parse_args()
    paths = ["wire", "bridge", "proxy_ndp", "portier userspace", "portier fast path"]
    resolvers = [
        "wire",
        "bridge",
        "proxy_ndp",
        "proxy_ndp default delay",
        "portier userspace",
        "portier fast path",
    ] + (["ndppd"] if shutil.which("ndppd") else [])
    rows: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(paths + resolvers):
        lab, client, stops = build(kind)
        try:
            lab.wait_ping(client, ROUTER_ADDRESS, timeout=30)
            row: dict[str, float] = {}
            if kind in paths:
                row["tcp_gbit"] = iperf(lab, client, False, args.seconds)
                row["udp_kpps"] = iperf(lab, client, True, args.seconds) / 1000
                row["rtt_ms"], row["hop_limit"] = ping_stats(lab)
            row["resolve_ms"] = resolution_ms(lab, args.probes)
            rows[kind] = row
            print(f"measured {kind}: {row}", flush=True)
        finally:
            for stop in stops:
                stop()
            lab.down()
    wire = rows["wire"]
    print()
    header = f"{'data path':<26}{'TCP Gbit/s':>18}{'UDP kpps':>18}{'RTT ms':>16}{'hop':>5}"
    print(header + f"{'resolve ms (p50)':>20}")
    for kind, row in rows.items():
        cells = []
        for key, width in (("tcp_gbit", 18), ("udp_kpps", 18), ("rtt_ms", 16)):
            if key in row:
                text = f"{row[key]:.2f} ({row[key] / wire[key]:.2f}x)"
                cells.append(f"{text:>{width}}")
            else:
                cells.append(f"{'-':>{width}}")
        hop = f"{int(row['hop_limit']):>5}" if "hop_limit" in row else f"{'-':>5}"
        resolve = f"{row['resolve_ms']:.3f} ({row['resolve_ms'] / wire['resolve_ms']:.1f}x)"
        print(f"{kind:<26}{''.join(cells)}{hop}{resolve:>20}")
    print(
        "\nratios are to the wire in this run (for RTT and resolve, lower is better);"
        " the guest sends with hop limit 64"
    )


if __name__ == "__main__":
    main()
