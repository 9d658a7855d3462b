"""Worker counters as portierctl shows them, read once the heartbeats caught up."""

from __future__ import annotations

import time

from labdaemon import Daemon


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
