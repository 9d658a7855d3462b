"""The state file: what portierd must find again after any restart.

Written atomically (temp file, fsync, rename, fsync of the directory) under the state
dir after every runtime change, and for learned neighbors at most every few seconds.
Times are stored as wall-clock stamps so that a later start ages what it reads: loop
disables keep their remaining time and neighbors their idle time, whatever happened to
the monotonic clock meanwhile (a reboot resets it).  A file that cannot be read back is
moved aside with a clear report, and the daemon starts from its configuration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from portier.groups import DisableReason, Topology
from portier.neighbors import NeighborCache
from portier.replication import apply_topology, topology_to_wire
from portier.schema import SchemaError, neighbor_from_wire, neighbor_to_wire

log = logging.getLogger("portier.supervisor")

STATE_FILE = "state.msgpack"
STATE_FORMAT = 1
# Disable reasons that describe the kernel at save time: re-learned, never restored.
_TRANSIENT = {DisableReason.LINK_DOWN, DisableReason.NOT_PRESENT}


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _to_wall(monotonic_time: float | None, now_mono: float, now_wall: float) -> float | None:
    return None if monotonic_time is None else now_wall + (monotonic_time - now_mono)


def save_state(
    state_dir: Path,
    topology: Topology,
    neighbors: NeighborCache,
    config: dict[str, Any],
) -> Path:
    now_mono, now_wall = time.monotonic(), time.time()
    wire = topology_to_wire(topology)
    for item in wire["interfaces"]:
        item["loop_disabled_until"] = _to_wall(item["loop_disabled_until"], now_mono, now_wall)
    for group in wire["groups"]:
        group["onlink_prefixes"] = [
            [prefix, length, _to_wall(until, now_mono, now_wall) if until != float("inf") else None]
            for prefix, length, until in group["onlink_prefixes"]
        ]
    entries = []
    for entry in neighbors:
        item = neighbor_to_wire(entry)
        for key in ("first_seen", "last_seen", "reachable_until"):
            item[key] = _to_wall(item[key], now_mono, now_wall)
        entries.append(item)
    document = {
        "format": STATE_FORMAT,
        "saved_at": now_wall,
        "config": config,
        "topology": wire,
        "neighbors": entries,
    }
    path = state_dir / STATE_FILE
    write_atomically(path, msgpack.packb(document, use_bin_type=True))
    return path


@dataclass
class RestoredState:
    config: dict[str, Any]  # the configuration the saved state was built from
    saved_at: float
    neighbors_restored: int
    neighbors_aged_out: int


class StateFileError(Exception):
    pass


def load_state(
    state_dir: Path, topology: Topology, neighbors: NeighborCache
) -> RestoredState | None:
    """Restore into `topology` and `neighbors`; None when there is no state file.

    A file that cannot be used is renamed `state.msgpack.corrupt-<time>` and reported.
    """
    path = state_dir / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("cannot read state file %s: %s; starting from the configuration", path, exc)
        return None
    try:
        return _restore(raw, topology, neighbors)
    except (StateFileError, SchemaError, ValueError, TypeError, KeyError) as exc:
        aside = path.with_name(f"{STATE_FILE}.corrupt-{int(time.time())}")
        os.replace(path, aside)
        log.error(
            "state file %s is unusable (%s); moved aside to %s; starting from the configuration",
            path,
            exc,
            aside,
        )
        return None


def _restore(raw: bytes, topology: Topology, neighbors: NeighborCache) -> RestoredState:
    try:
        document = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types on garbage
        raise StateFileError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        raise StateFileError("unknown format")
    now_mono, now_wall = time.monotonic(), time.time()

    def to_mono(wall: float | None) -> float | None:
        return None if wall is None else now_mono - (now_wall - float(wall))

    wire = document["topology"]
    for item in wire["interfaces"]:
        item["loop_disabled_until"] = to_mono(item["loop_disabled_until"])
        reasons = [r for r in item["disable_reasons"] if DisableReason(r) not in _TRANSIENT]
        if item["loop_disabled_until"] is None:
            reasons = [r for r in reasons if r != DisableReason.LOOP_DETECTED]
        item["disable_reasons"] = reasons
        item["ifindex"] = 0  # the workers report the kernel's view afresh
    for group in wire["groups"]:
        group["onlink_prefixes"] = [
            [prefix, length, float("inf") if until is None else to_mono(until)]
            for prefix, length, until in group["onlink_prefixes"]
        ]
    apply_topology(topology, wire)
    topology.expire(now_mono)  # loop disables and prefixes that ran out while down

    restored = aged_out = 0
    entries = []
    for item in document["neighbors"]:
        for key in ("first_seen", "last_seen", "reachable_until"):
            item[key] = to_mono(item[key])
        entry = neighbor_from_wire(item)
        if entry.last_seen + neighbors.lifetime_s <= now_mono:
            aged_out += 1
            continue
        entries.append(entry)
    neighbors.flush()
    for entry in sorted(entries, key=lambda e: e.last_seen):
        interface = topology.interfaces.get(entry.interface)
        if interface is None or interface.group != entry.group:
            aged_out += 1
            continue
        neighbors.put(entry)
        restored += 1
    return RestoredState(
        config=dict(document.get("config", {})),
        saved_at=float(document["saved_at"]),
        neighbors_restored=restored,
        neighbors_aged_out=aged_out,
    )
