"""Appliance benchmark: restart downtime, first-ping loss, memory, forwarding rate.

Run as root: .venv/bin/python bench/appliance_bench.py [--guests 32] [--seconds 5]
Builds a lab (deploy/lab.py), starts the real portierd with the workers forwarding
everything (fast path off), then again with the kernel fast path, and prints figures
for both; asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from lab import ROUTER_ADDRESS, Guest, Lab, run, wait_for  # noqa: E402
from labdaemon import Daemon, GroupSpec  # noqa: E402


def memory_kib(pid: int) -> tuple[int, int]:
    """(USS, PSS) in KiB from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Pss"]


def restart_downtime(
    lab: Lab, daemon: Daemon, guest: Guest, address: str, rounds: int
) -> list[float]:
    """The longest silence in echo replies (one ping per 10 ms) after SIGKILL of the
    guest's worker, in seconds: the time the guest was unreachable."""
    results = []
    for _ in range(rounds):
        pinger = lab.spawn(
            lab.router,
            "ping",
            "-6",
            "-n",
            "-D",
            "-i",
            "0.01",
            "-W",
            "1",
            "-w",
            "20",
            address,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # steady replies before the kill
        pid = daemon.worker(guest.port)["pid"]
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda p=pid: (
                (w := daemon.worker(guest.port))["pid"] not in (None, p) and w["state"] == "running"
            ),
            20,
            "restart",
            interval=0.1,
        )
        time.sleep(1.0)
        pinger.send_signal(signal.SIGINT)
        output, _ = pinger.communicate(timeout=10)
        stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", output, re.M)]
        gaps = [b - a for a, b in itertools.pairwise(stamps) if b > killed_at]
        results.append(max(gaps) if gaps else float("nan"))
        time.sleep(2.0)
    return results


def first_ping_loss(lab: Lab, daemon: Daemon, ports: list[str]) -> tuple[int, int]:
    lost = 0
    for port in ports:
        guest = Guest(f"{lab.prefix}-{port}", port, "lan")
        run("ip", "netns", "add", guest.name)
        lab.guest_list.append(guest)
        lab.ns(guest.name, "ip", "link", "set", "lo", "up")
        lab.add_guest_link(guest)
        lab.ns(lab.proxy, "ip", "link", "set", port, "up")
        lab.ns(guest.name, "ip", "link", "set", "eth0", "up")
        lab.wait_slaac(guest, 30)
        reply = lab.ns(
            guest.name, "ping", "-6", "-n", "-c", "1", "-W", "3", ROUTER_ADDRESS, check=False
        )
        lost += reply.returncode != 0
    return lost, len(ports)


def udp_pps(lab: Lab, client_ns: str, server_ns: str, address: str, seconds: int) -> float:
    server = lab.spawn(server_ns, "iperf3", "-s", "-1", "-J", stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    lab.ns(
        client_ns,
        "iperf3",
        "-6",
        "-c",
        address,
        "-u",
        "-b",
        "0",
        "-l",
        "64",
        "-t",
        str(seconds),
        check=False,
        timeout=seconds + 30,
    )
    output, _ = server.communicate(timeout=30)
    summary = json.loads(output)["end"]["sum"]
    return (summary["packets"] - summary["lost_packets"]) / summary["seconds"]


def wire_baseline(seconds: int) -> float:
    """64-byte UDP between two namespaces joined by one veth pair: the wire."""
    lab = Lab(guests=0, radvd=False)
    lab.guest_list = []
    lab.up()
    try:
        lab.ns(lab.router, "ip", "-6", "addr", "add", "2001:db8:9::2/64", "dev", "r0", "nodad")
        lab.ns(lab.proxy, "ip", "-6", "addr", "add", "2001:db8:9::1/64", "dev", "up0", "nodad")
        lab.wait_ping(lab.proxy, "2001:db8:9::2")
        return udp_pps(lab, lab.proxy, lab.router, "2001:db8:9::2", seconds)
    finally:
        lab.down()


def measure(
    lab: Lab, groups: list[GroupSpec], fresh: list[str], fastpath: bool, seconds: int
) -> float:
    """Start portierd, print what it costs and how it recovers; its UDP rate in pps.

    `fresh` are members with no interface yet: the first run creates them as new guests.
    """
    extra = "" if fastpath else "[fastpath]\nenabled = false"
    daemon = Daemon(lab, groups, extra=extra).start(timeout=120)
    try:
        addresses = [lab.wait_slaac(g, 60) for g in lab.guest_list]
        for guest in lab.guest_list:
            lab.wait_ping(guest.name, ROUTER_ADDRESS, timeout=30)
        status = daemon.status()
        assert daemon.process is not None
        supervisor = memory_kib(daemon.process.pid)
        workers = [memory_kib(w["pid"]) for w in status["workers"] if w["pid"]]
        uss = [u / 1024 for u, _ in workers]
        pss = [p / 1024 for _, p in workers]
        print(f"interfaces bound: {len(status['workers'])} (guests + upstream + 5 absent)")
        uss_s, pss_s = (value / 1024 for value in supervisor)
        print(f"supervisor memory: USS {uss_s:.1f} MiB, PSS {pss_s:.1f} MiB")
        print(
            f"worker memory: USS median {statistics.median(uss):.1f} MiB, max {max(uss):.1f} MiB;"
            f" PSS median {statistics.median(pss):.1f} MiB (target: USS <= 25 MiB)"
        )
        downtime = restart_downtime(lab, daemon, lab.guest_list[0], addresses[0], 3)
        print(
            "worker kill -> longest silence in replies: "
            + ", ".join(f"{d * 1000:.0f} ms" for d in downtime)
            + f" (median {statistics.median(downtime) * 1000:.0f} ms; one ping per 10 ms)"
        )
        if not fastpath:
            lost, total = first_ping_loss(lab, daemon, fresh)
            print(f"first ping of a freshly started guest: {lost} of {total} lost (target: 0)")
        return udp_pps(lab, lab.guest_list[1].name, lab.router, ROUTER_ADDRESS, seconds)
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--guests", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    lab = Lab(guests=args.guests)
    lab.up()
    rates = {}
    try:
        fresh = [f"vm{90 + i}" for i in range(5)]
        groups = [GroupSpec("lan", "up0", [g.port for g in lab.guest_list] + fresh)]
        for fastpath in (False, True):
            print(f"== {'kernel fast path' if fastpath else 'workers forward everything'}")
            rates[fastpath] = measure(lab, groups, fresh, fastpath, args.seconds)
    finally:
        lab.down()
    wire = wire_baseline(args.seconds)
    print(f"64-byte UDP over a plain veth pair (the wire):   {wire:,.0f} pps received")
    for fastpath, label in ((False, "through one worker"), (True, "through the fast path")):
        rate = rates[fastpath]
        print(f"64-byte UDP, guest -> router {label}: {rate:,.0f} pps ({rate / wire:.2f}x)")


if __name__ == "__main__":
    main()
