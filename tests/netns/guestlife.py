"""Guests that arrive and leave while portierd runs: the steps and their timings."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from lab import ROUTER_ADDRESS, Guest, Lab, wait_for
from labdaemon import Daemon


def worker_interfaces(daemon: Daemon) -> set[str]:
    return {w["interface"] for w in daemon.call("workers") if w.get("pid")}


def bound(daemon: Daemon) -> dict[str, str | None]:
    return {i["name"]: i["bound_by"] for i in daemon.call("interfaces")}


def arrive(lab: Lab, guest: Guest) -> float:
    """Create the guest's link; seconds until it has SLAAC and is reachable both ways."""
    started = time.monotonic()
    lab.add_guest_link(guest)
    lab.ns(lab.proxy, "ip", "link", "set", guest.port, "up")
    lab.ns(guest.name, "ip", "link", "set", "eth0", "up")
    address = lab.wait_slaac(guest, timeout=10)
    lab.wait_ping(guest.name, ROUTER_ADDRESS, timeout=10)
    lab.wait_ping(lab.router, address, timeout=10)
    return time.monotonic() - started


def leave(lab: Lab, daemon: Daemon, guest: Guest) -> float:
    started = time.monotonic()
    lab.ns(lab.proxy, "ip", "link", "del", guest.port)
    wait_for(
        lambda: guest.port not in worker_interfaces(daemon) and guest.port not in bound(daemon),
        5,
        f"the worker for {guest.port} to stop and the interface to be released",
        interval=0.05,
    )
    return time.monotonic() - started


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (workers are the zygote's children, not portierd's)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            after_name = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if after_name[0] != "Z":
            children.setdefault(int(after_name[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def open_fds(pid: int) -> dict[str, int]:
    """How many of the process's descriptors are sockets and how many are anything else."""
    kinds = {"sockets": 0, "other": 0}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            kinds["sockets" if os.readlink(fd).startswith("socket:") else "other"] += 1
    return kinds


def private_kib(pid: int) -> int:
    """USS: the process's private (clean and dirty) memory, from smaps_rollup."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total
