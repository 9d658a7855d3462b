"""Portier against the wire and the other ways of joining two links, measured in one run.

Run as root: .venv/bin/python bench/compare_bench.py [--seconds 5] [--rounds 3] [--probes 15]
                [--only "wire,portier fast path,portier fast path bare"]

For each data path (plain veth pair = the wire; Linux bridge; kernel proxy_ndp with
forwarding; Portier's userspace path; Portier's kernel fast path (nftables) and its BPF
data path ("portier bpf"), and "bare", the nftables path
with the VLAN and source-address checks taken out of its ingress chains, which is the
ruleset before those checks, to price them) it builds fresh
network namespaces (deploy/lab.py), all of them up front, then measures in rounds, one
path after the other within each round so that the machine's slow minutes fall on every
path alike: guest -> router TCP throughput with default offloads, 64-byte UDP packets/s
both ways, router -> guest ping RTT and the hop limit the router sees.  Neighbor
resolution is the router's first ping to a guest it has not resolved yet (its neighbor
entry flushed before each probe), for Portier, ndppd and kernel proxy_ndp (default
proxy_delay and 0) beside the bridge and the wire.  The table shows medians over the
rounds (resolution: over every probe), each as a ratio to the wire in this same run,
and the spread.  Asserts nothing; load is bounded (iperf3 -t SECONDS, a few pings).
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

from lab import ROUTER_ADDRESS, Lab, LabError, wait_for  # noqa: E402
from labdaemon import Daemon, GroupSpec  # noqa: E402

GUEST_ADDRESS = "2001:db8:1::101"


BPF_OBJECT = ""  # --bpf-object: a variant of the tc program for the "portier bpf" row


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
        engine = {"portier userspace": "off", "portier bpf": "bpf"}.get(kind, "nftables")
        extra = f'[fastpath]\nengine = "{engine}"'
        if engine == "bpf" and BPF_OBJECT:
            extra += f'\nbpf_object = "{BPF_OBJECT}"'
        fast = engine != "off"
        daemon = Daemon(lab, [GroupSpec("lan", "up0", ["vm1"])], extra=extra)
        try:
            daemon.start()
            if fast:
                lab.wait_ping(guest.name, ROUTER_ADDRESS)
                lab.ping(lab.router, GUEST_ADDRESS)
                wait_for(lambda: daemon.call("fastpath")["neighbors"] >= 2, 10, "the fast path")
            if kind == "portier fast path bare":
                strip_checks(lab, vlan=True)
            elif kind == "portier fast path no SAVI":
                strip_checks(lab, vlan=False)
        except BaseException:
            if daemon.process is not None:
                daemon.stop()
            lab.down()
            raise
        stops.append(daemon.stop)
    return lab, guest.name, stops


def strip_checks(lab: Lab, vlan: bool) -> None:
    """Delete the ingress chains' source-address rule (reads @f_...) and with `vlan`
    their VLAN rule (reads the Ethernet type)."""
    listing = json.loads(
        lab.ns(lab.proxy, "nft", "-j", "list", "table", "netdev", "portier").stdout
    )
    removed = 0
    for item in listing["nftables"]:
        rule = item.get("rule")
        if not rule or not rule["chain"].startswith("in_"):
            continue
        ether_type = {"payload": {"protocol": "ether", "field": "type"}}
        tagged = any(e.get("match", {}).get("left") == ether_type for e in rule["expr"])
        if (vlan and tagged) or "@f_" in json.dumps(rule["expr"]):
            lab.ns(
                lab.proxy,
                "nft",
                "delete",
                "rule",
                "netdev",
                "portier",
                rule["chain"],
                "handle",
                str(rule["handle"]),
            )
            removed += 1
    if removed < (4 if vlan else 2):  # one or two in each of the two members' chains
        raise RuntimeError(f"only {removed} check rules found in the fast path")
    print(f"fast path: {removed} check rules deleted", flush=True)


def iperf(lab: Lab, client: str, udp: bool, seconds: int, reverse: bool = False) -> float:
    """Guest -> router (router -> guest with `reverse`): Gbit/s, or received packets/s."""
    server = lab.spawn(lab.router, "iperf3", "-s", "-1", "-J", stdout=subprocess.PIPE, text=True)
    wait_for(
        lambda: "LISTEN" in lab.ns(lab.router, "ss", "-ltn", "sport = :5201").stdout,
        5,
        "iperf3 listening",
    )
    argv = ["iperf3", "-6", "-c", ROUTER_ADDRESS, "-t", str(seconds), "-J"]
    if udp:
        argv += ["-u", "-b", "0", "-l", "64"]
    if reverse:
        argv.append("-R")
    result = lab.ns(client, *argv, check=False, timeout=seconds + 30)
    output, _ = server.communicate(timeout=30)
    ends = [json.loads(text)["end"] for text in (output, result.stdout)]
    if not udp:
        return ends[0]["sum_received"]["bits_per_second"] / 1e9
    (summary,) = [end["sum"] for end in ends if not end["sum"].get("sender", True)]
    return (summary["packets"] - summary["lost_packets"]) / summary["seconds"]


def ping_stats(lab: Lab) -> tuple[float, int]:
    result = lab.ping(lab.router, GUEST_ADDRESS, count=50, extra=("-i", "0.01"))
    average = float(re.search(r"= [\d.]+/([\d.]+)/", result.stdout).group(1))
    hops = int(re.search(r"ttl=(\d+)", result.stdout).group(1))
    return average, hops


def resolution_ms(lab: Lab, probes: int) -> list[float]:
    times = []
    for _ in range(probes):
        lab.ns(lab.router, "ip", "-6", "neigh", "flush", "dev", "r0")
        result = lab.ping(lab.router, GUEST_ADDRESS, count=1, timeout_s=3)
        match = re.search(r"time=([\d.]+) ms", result.stdout)
        if match:
            times.append(float(match.group(1)))
        time.sleep(0.05)  # let stray answers of the previous probe settle
    return times


COLUMNS = (  # key, heading, width
    ("tcp_gbit", "TCP Gbit/s", 16),
    ("udp_up_kpps", "UDP up kpps", 17),
    ("udp_down_kpps", "UDP down kpps", 17),
    ("rtt_ms", "RTT ms", 14),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=15, help="resolution probes per round")
    parser.add_argument(
        "--only", help="comma-separated data paths to measure (throughput only, no resolution)"
    )
    parser.add_argument(
        "--bpf-object", default="", help="a compiled tc program to run as the 'portier bpf' row"
    )
    args = parser.parse_args()
    global BPF_OBJECT
    BPF_OBJECT = args.bpf_object
    paths = [
        "wire",
        "bridge",
        "proxy_ndp",
        "portier userspace",
        "portier fast path",
        "portier fast path bare",
        "portier fast path no SAVI",
        "portier bpf",
    ]
    resolvers = [
        "wire",
        "bridge",
        "proxy_ndp",
        "proxy_ndp default delay",
        "portier userspace",
        "portier fast path",
        "portier bpf",
    ] + (["ndppd"] if shutil.which("ndppd") else [])
    if args.only:
        paths = ["wire", *(p for p in args.only.split(",") if p != "wire")]
        resolvers = []
    samples: dict[str, dict[str, list[float]]] = {}
    setups: dict[str, tuple[Lab, str, list[Callable[[], None]]]] = {}
    try:
        for kind in dict.fromkeys(paths + resolvers):
            setups[kind] = build(kind)
            samples[kind] = {}
        for kind, (lab, client, _) in setups.items():
            try:
                lab.wait_ping(client, ROUTER_ADDRESS, timeout=30)
            except LabError as exc:
                raise LabError(f"{kind}: {exc}") from None
        for number in range(args.rounds):
            for kind in paths:
                lab, client, _ = setups[kind]
                figures = {
                    "tcp_gbit": iperf(lab, client, False, args.seconds),
                    "udp_up_kpps": iperf(lab, client, True, args.seconds) / 1000,
                    "udp_down_kpps": iperf(lab, client, True, args.seconds, reverse=True) / 1000,
                }
                for key, value in figures.items():
                    samples[kind].setdefault(key, []).append(value)
                print(f"round {number + 1}: {kind}: {figures}", flush=True)
            for kind in resolvers:
                times = resolution_ms(setups[kind][0], args.probes)
                samples[kind].setdefault("resolve_ms", []).extend(times)
        hops: dict[str, int] = {}
        for kind in paths:
            rtt, hops[kind] = ping_stats(setups[kind][0])
            samples[kind]["rtt_ms"] = [rtt]
    finally:
        for lab, _, stops in setups.values():
            for stop in stops:
                stop()
            lab.down()
    report(samples, hops, args)


def report(samples: dict[str, dict[str, list[float]]], hops: dict[str, int], args) -> None:
    median = {
        kind: {key: statistics.median(values) for key, values in figures.items() if values}
        for kind, figures in samples.items()
    }
    wire = median["wire"]
    print(f"\nmedians of {args.rounds} rounds of {args.seconds} s; resolution over every probe")
    header = f"{'data path':<25}" + "".join(f"{title:>{width}}" for _, title, width in COLUMNS)
    print(header + f"{'hop':>5}{'resolve p50 ms':>20}")
    for kind, row in median.items():
        cells = []
        for key, _, width in COLUMNS:
            text = f"{row[key]:.2f} ({row[key] / wire[key]:.2f}x)" if key in row else "-"
            cells.append(f"{text:>{width}}")
        hop = f"{hops[kind]:>5}" if kind in hops else f"{'-':>5}"
        resolve = row.get("resolve_ms")
        text = f"{resolve:.3f} ({resolve / wire['resolve_ms']:.1f}x)" if resolve else "-"
        print(f"{kind:<25}{''.join(cells)}{hop}{text:>20}")
    print("\nspread (min-max over the rounds; resolution: p10-p90 of the probes)")
    for kind, figures in samples.items():
        parts = [
            f"{key} {min(values):.2f}-{max(values):.2f}"
            for key, values in figures.items()
            if key not in ("rtt_ms", "resolve_ms") and values
        ]
        probes = sorted(figures.get("resolve_ms", []))
        if probes:
            low, high = probes[len(probes) // 10], probes[(len(probes) * 9) // 10]
            parts.append(f"resolve {low:.3f}-{high:.3f} ({len(probes)} probes)")
        print(f"  {kind:<25}{'; '.join(parts)}")
    print(
        "\nratios are to the wire in this run (for RTT and resolve, lower is better);"
        " the guest sends with hop limit 64"
    )


if __name__ == "__main__":
    main()
