"""A two-guest lab whose kernel path forwards, and the worker counters that show what did
not go through Python (read once the workers' heartbeats caught up)."""

from __future__ import annotations

import subprocess
import sys
import time

from lab import ROUTER_ADDRESS, Lab, wait_for
from labdaemon import Daemon
from peers import PEERS

NFT = '[fastpath]\nengine = "nftables"\n'  # for tests of the nftables engine itself


def forwarding_lab(make_lab, extra: str = NFT) -> tuple[Lab, Daemon, list[str]]:
    """Both guests on SLAAC, reachable both ways, and their neighbors in the kernel."""
    lab = make_lab(guests=2)
    daemon = Daemon(lab, extra=extra).start()
    addresses = [lab.wait_slaac(g) for g in lab.guest_list]
    for guest, address in zip(lab.guest_list, addresses, strict=True):
        lab.wait_ping(guest.name, ROUTER_ADDRESS)
        assert lab.ping(lab.router, address).returncode == 0
    # Learned neighbors reach the kernel within a tick.
    wait_for(lambda: daemon.call("fastpath")["neighbors"] >= 4, 5, "neighbors in the kernel")
    return lab, daemon, addresses


def hop_limits_arriving(lab: Lab, hops: int) -> list[int]:
    """The hop limits the router sees on three datagrams the first guest sends with `hops`."""
    receiver = lab.spawn(
        lab.router, sys.executable, PEERS, "udprecv", "5002", "3", stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "listening"
    sender = lab.spawn(
        lab.guest_list[0].name, sys.executable, PEERS, "udpsend", ROUTER_ADDRESS, "5002", str(hops)
    )
    try:
        return [int(receiver.stdout.readline()) for _ in range(3)]
    finally:
        sender.terminate()


def settled_counter(daemon: Daemon, interface: str, name: str) -> int:
    """A worker counter once its heartbeats (one a second) have caught up with traffic."""
    previous = worker_counter(daemon, interface, name)
    for _ in range(10):
        time.sleep(1.1)  # one heartbeat period: the report has no other signal to wait on
        current = worker_counter(daemon, interface, name)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"{interface} {name} never settled")


def worker_counter(daemon: Daemon, interface: str, name: str) -> int:
    return next(w for w in daemon.call("workers") if w["interface"] == interface)["counters"].get(
        name, 0
    )
