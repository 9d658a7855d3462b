"""The state file: what portierd must find again after any restart, and how it is saved.

Written atomically (temp file, fsync, rename, fsync of the directory) under the state
dir after every runtime change, and for learned neighbors at most every few seconds.
`StateSaver` takes the snapshot on the event loop, so that it is consistent (plain values
only, one tuple per neighbor), and builds the document, packs, writes and fsyncs in a
thread of its own, one write at a time; a save asked
for while one is running is folded into one more write with the newest state.  A failed
write never raises and loses nothing in memory: it is recorded (the OS's message, since
when, how often) for status, metrics and the operation's reply, and the next write that
succeeds catches up.  Times are stored as wall-clock stamps so that a later start ages
what it reads: loop disables keep their remaining time and neighbors their idle time,
whatever happened to the monotonic clock meanwhile (a reboot resets it).  A file is
checked whole before anything of it is applied: one that cannot be used is moved aside
with a clear report, and the daemon starts from its configuration.  This module never
decides what the state is; it only stores and restores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from portier.groups import (
    DisableReason,
    Topology,
    check_group_name,
    check_interface_name,
    check_member_pattern,
)
from portier.neighbors import Neighbor, NeighborCache
from portier.replication import apply_topology, topology_to_wire
from portier.schema import SchemaError, neighbor_from_wire
from portier.status import OK, Code, Status

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


@dataclass(frozen=True)
class Snapshot:
    """The state at one moment, taken on the event loop: cheap to take, safe to hand to
    another thread (plain values only; no live object of the state)."""

    now_mono: float
    now_wall: float
    topology: dict[str, Any]
    neighbors: list[tuple[Any, ...]]
    config: dict[str, Any]


def take_snapshot(topology: Topology, neighbors: NeighborCache, config: dict[str, Any]) -> Snapshot:
    # One tuple per neighbor (the fields are immutable values): the per-neighbor dicts
    # and the packing are left to the writer thread.
    return Snapshot(
        time.monotonic(),
        time.time(),
        topology_to_wire(topology),
        [
            (
                n.group,
                n.address,
                n.interface,
                n.mac,
                n.is_router,
                n.first_seen,
                n.last_seen,
                n.reachable_until,
            )
            for n in neighbors
        ],
        _plain(config),
    )


_NEIGHBOR_FIELDS = (
    "group",
    "address",
    "interface",
    "mac",
    "is_router",
    "first_seen",
    "last_seen",
    "reachable_until",
)


def snapshot_document(snapshot: Snapshot) -> dict[str, Any]:
    """The stored form of a snapshot, with wall-clock times."""
    now_mono, now_wall = snapshot.now_mono, snapshot.now_wall
    wire = snapshot.topology
    for item in wire["interfaces"]:
        item["loop_disabled_until"] = _to_wall(item["loop_disabled_until"], now_mono, now_wall)
    for group in wire["groups"]:
        group["onlink_prefixes"] = [
            [prefix, length, _to_wall(until, now_mono, now_wall) if until != float("inf") else None]
            for prefix, length, until in group["onlink_prefixes"]
        ]
    entries = []
    for values in snapshot.neighbors:
        item = dict(zip(_NEIGHBOR_FIELDS, values, strict=True))
        for key in ("first_seen", "last_seen", "reachable_until"):
            item[key] = _to_wall(item[key], now_mono, now_wall)
        entries.append(item)
    return {
        "format": STATE_FORMAT,
        "saved_at": now_wall,
        "config": snapshot.config,
        "topology": wire,
        "neighbors": entries,
    }


def state_document(
    topology: Topology, neighbors: NeighborCache, config: dict[str, Any]
) -> dict[str, Any]:
    """The whole state as plain data, as it is stored."""
    return snapshot_document(take_snapshot(topology, neighbors, config))


def _plain(value: Any) -> Any:
    """A deep copy of plain data, so that the writer thread never reads live objects."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def write_document(path: Path, document: dict[str, Any]) -> None:
    write_atomically(path, msgpack.packb(document, use_bin_type=True))


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    write_document(path, snapshot_document(snapshot))


def save_state(
    state_dir: Path,
    topology: Topology,
    neighbors: NeighborCache,
    config: dict[str, Any],
) -> Path:
    """Save now, in the caller's thread; raises OSError (StateSaver never does)."""
    path = state_dir / STATE_FILE
    write_document(path, state_document(topology, neighbors, config))
    return path


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


class StateSaver:
    """Saves of one state dir, serialized and coalesced, with the outcome of the last."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE
        self.error: str | None = None  # None while the last save succeeded
        self.failing_since: float | None = None  # wall time the current failures began
        self.saved_at: float | None = None  # wall time of the last state on disk
        self.failures = 0
        self._streak = 0  # failures since the last good save
        self._lock = asyncio.Lock()
        # One thread: writes reach the disk in the order they were taken, even when a
        # caller gave up waiting (a cancelled save still finishes its write).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portier-state")
        self._latest: Snapshot | None = None
        self._requested = 0  # number of the newest snapshot taken
        self._written = 0  # number of the newest snapshot a write finished with
        self._result: Status = OK

    async def save(
        self, topology: Topology, neighbors: NeighborCache, applied_config: dict[str, Any]
    ) -> Status:
        """Take the state now and get it on disk; OK, or the reason it is not there."""
        try:
            self._latest = take_snapshot(topology, neighbors, applied_config)
        except Exception as exc:  # a bug here costs the save, never the caller
            log.exception("cannot take a snapshot of the state")
            return self._record_failure(_error_text(exc))
        self._requested += 1
        mine = self._requested
        async with self._lock:
            if self._written >= mine:
                return self._result  # a write that started after this snapshot covered it
            snapshot, number = self._latest, self._requested
            assert snapshot is not None
            loop = asyncio.get_running_loop()
            try:
                write = loop.run_in_executor(self._writer, write_snapshot, self.path, snapshot)
            except RuntimeError:  # closed: the daemon is on its way out
                return self._record_failure("the state saver is closed")
            write.add_done_callback(lambda done: self._finished(done, number, snapshot))
            with contextlib.suppress(Exception):
                await asyncio.shield(write)
            return self._result

    def _finished(self, done: asyncio.Future[None], number: int, snapshot: Snapshot) -> None:
        self._written = max(self._written, number)
        if done.cancelled():
            self._result = self._record_failure("the write was cancelled")
            return
        exc = done.exception()
        if exc is not None:
            if not isinstance(exc, OSError):
                log.error("cannot write state to %s", self.path, exc_info=exc)
            self._result = self._record_failure(_error_text(exc))
            return
        if self.error is not None:
            log.info(
                "state saved again to %s, after %d failed saves since %s",
                self.path,
                self._streak,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.failing_since or 0)),
            )
        self._streak = 0
        self.error = None
        self.failing_since = None
        self.saved_at = snapshot.now_wall
        self._result = OK

    def _record_failure(self, error: str) -> Status:
        if error != self.error:
            log.error(
                "cannot write state to %s: %s; changes are kept in memory and saved "
                "once writing works again",
                self.path,
                error,
            )
        else:
            log.debug("still cannot write state to %s: %s", self.path, error)
        self.failures += 1
        self._streak += 1
        self.error = error
        if self.failing_since is None:
            self.failing_since = time.time()
        return Status(Code.UNEXPECTED_FAILURE, error)

    def view(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "failing_since": self.failing_since,
            "saved_at": self.saved_at,
            "failures": self.failures,
        }

    def close(self) -> None:
        """After the last save: let the writer thread go (a later save fails, loudly)."""
        self._writer.shutdown(wait=True)


# --- restoring ---------------------------------------------------------------------------


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
    """Restore into `topology` and `neighbors`; None when there is no usable state file.

    The whole file is checked before anything is applied.  A file that cannot be used is
    renamed `state.msgpack.corrupt-<time>` and reported; nothing of it is restored.
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
        plan = _check_document(raw, time.monotonic(), time.time(), neighbors.lifetime_s)
    except (StateFileError, SchemaError) as exc:
        _move_aside(path, str(exc))
        return None
    return plan.apply(topology, neighbors)


def _move_aside(path: Path, problem: str) -> None:
    stamp = int(time.time())
    aside = path.with_name(f"{STATE_FILE}.corrupt-{stamp}")
    serial = 1
    while aside.exists():  # never overwrite the copy an earlier refusal kept
        aside = path.with_name(f"{STATE_FILE}.corrupt-{stamp}.{serial}")
        serial += 1
    try:
        os.replace(path, aside)
    except OSError as exc:
        log.error(
            "state file %s is unusable (%s) and cannot be moved aside (%s); starting from "
            "the configuration, and the next save replaces it",
            path,
            problem,
            exc.strerror or exc,
        )
        return
    log.error(
        "state file %s is unusable (%s); moved aside to %s; starting from the configuration",
        path,
        problem,
        aside,
    )


@dataclass
class _RestorePlan:
    """A checked state file, converted to this boot's monotonic clock, not yet applied."""

    topology_wire: dict[str, Any]
    neighbors: list[Neighbor]
    aged_out: int
    config: dict[str, Any]
    saved_at: float
    now_mono: float

    def apply(self, topology: Topology, neighbors: NeighborCache) -> RestoredState:
        apply_topology(topology, self.topology_wire)
        topology.expire(self.now_mono)  # loop disables and prefixes that ran out while down
        restored, aged_out = 0, self.aged_out
        neighbors.flush()
        for entry in sorted(self.neighbors, key=lambda e: e.last_seen):
            interface = topology.interfaces.get(entry.interface)
            if interface is None or interface.group != entry.group:
                aged_out += 1
                continue
            neighbors.put(entry)
            restored += 1
        return RestoredState(self.config, self.saved_at, restored, aged_out)


def _fail(where: str, problem: str) -> StateFileError:
    return StateFileError(f"{where}: {problem}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _need(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise _fail(where, problem)


def _map(value: object, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    _need(isinstance(value, dict), where, "must be a map")
    assert isinstance(value, dict)
    for key in keys:
        _need(key in value, where, f"missing '{key}'")
    return value


def _list(value: object, where: str) -> list[Any]:
    _need(isinstance(value, list), where, "must be a list")
    assert isinstance(value, list)
    return value


def _check_document(
    raw: bytes, now_mono: float, now_wall: float, lifetime_s: float
) -> _RestorePlan:
    try:
        document = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types on garbage
        raise StateFileError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        raise StateFileError("unknown format")
    _map(document, "state", ("saved_at", "config", "topology", "neighbors"))
    _need(_is_number(document["saved_at"]), "saved_at", "must be a finite number")

    def to_mono(wall: float | None) -> float | None:
        return None if wall is None else now_mono - (now_wall - float(wall))

    config = _check_config(document["config"])
    wire = _check_topology(document["topology"])
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
    # The topology's own reader, on a scratch copy: what it would refuse is refused here.
    apply_topology(Topology(), wire)

    entries, aged_out = [], 0
    for index, item in enumerate(_list(document["neighbors"], "neighbors")):
        where = f"neighbors[{index}]"
        _map(item, where, ("first_seen", "last_seen", "reachable_until"))
        for key in ("first_seen", "last_seen", "reachable_until"):
            _need(_is_number(item[key]), f"{where}.{key}", "must be a finite number")
        converted = {**item}
        for key in ("first_seen", "last_seen", "reachable_until"):
            converted[key] = to_mono(item[key])
        entry = neighbor_from_wire(converted)
        # An owner check does not outlive the daemon that ran it: the owner keeps it.
        entry.claimant, entry.claimant_mac, entry.check_until = "", b"", 0.0
        if entry.last_seen + lifetime_s <= now_mono:
            aged_out += 1
            continue
        entries.append(entry)
    return _RestorePlan(wire, entries, aged_out, config, float(document["saved_at"]), now_mono)


def _check_config(value: object) -> dict[str, Any]:
    """The configuration snapshot the state was built from (what reload diffs against)."""
    config = _map(value, "config", ("groups",))
    for index, group in enumerate(_list(config["groups"], "config.groups")):
        where = f"config.groups[{index}]"
        _map(group, where, ("name", "members"))
        _need(isinstance(group["name"], str), f"{where}.name", "must be a string")
        upstream = group.get("upstream")
        _need(upstream is None or isinstance(upstream, str), f"{where}.upstream", "not a name")
        members = _list(group["members"], f"{where}.members")
        _need(all(isinstance(m, str) for m in members), f"{where}.members", "not names")
    if "nested" in config:
        _need(isinstance(config["nested"], bool), "config.nested", "must be true or false")
    if "loop_disable_seconds" in config:
        _need(
            _is_number(config["loop_disable_seconds"]),
            "config.loop_disable_seconds",
            "must be a finite number",
        )
    return _plain(config)  # type: ignore[no-any-return]


_INTERFACE_KEYS = (
    "name",
    "ifindex",
    "mac",
    "mtu",
    "addresses",
    "group",
    "disable_reasons",
    "loop_disabled_until",
)
_GROUP_KEYS = ("name", "members", "upstream", "onlink_prefixes")
_REASONS = {reason.value for reason in DisableReason}


def _check_topology(value: object) -> dict[str, Any]:
    """Every field of the stored topology, and that its groups and members agree."""
    wire = _map(value, "topology", ("nested", "loop_disable_s", "interfaces", "groups"))
    _need(isinstance(wire["nested"], bool), "topology.nested", "must be true or false")
    _need(
        _is_number(wire["loop_disable_s"]) and wire["loop_disable_s"] > 0,
        "topology.loop_disable_s",
        "must be a positive number",
    )
    interfaces: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(_list(wire["interfaces"], "topology.interfaces")):
        where = f"topology.interfaces[{index}]"
        _map(item, where, _INTERFACE_KEYS)
        name = item["name"]
        _need(bool(check_interface_name(name)), where, f"bad interface name {name!r}")
        _need(name not in interfaces, where, f"{name} twice")
        ifindex, mtu, mac = item["ifindex"], item["mtu"], item["mac"]
        _need(isinstance(ifindex, int) and not isinstance(ifindex, bool), where, "bad ifindex")
        _need(isinstance(mtu, int) and not isinstance(mtu, bool) and mtu > 0, where, "bad mtu")
        # Whatever link-layer address the kernel reported (MAX_ADDR_LEN is 32 bytes).
        _need(isinstance(mac, bytes) and len(mac) <= 32, where, "bad link-layer address")
        addresses = _list(item["addresses"], f"{where}.addresses")
        _need(
            all(isinstance(a, bytes) and len(a) == 16 for a in addresses),
            where,
            "addresses must be 16 bytes each",
        )
        _need(item["group"] is None or isinstance(item["group"], str), where, "bad group")
        reasons = _list(item["disable_reasons"], f"{where}.disable_reasons")
        _need(all(r in _REASONS for r in reasons), where, f"unknown disable reason in {reasons}")
        until = item["loop_disabled_until"]
        _need(until is None or _is_number(until), where, "bad loop_disabled_until")
        bound_by = item.get("bound_by")
        _need(bound_by is None or isinstance(bound_by, str), where, "bad bound_by")
        interfaces[name] = item
    groups: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(_list(wire["groups"], "topology.groups")):
        where = f"topology.groups[{index}]"
        _map(item, where, _GROUP_KEYS)
        name = item["name"]
        _need(bool(check_group_name(name)), where, f"bad group name {name!r}")
        _need(name not in groups, where, f"{name} twice")
        members = _list(item["members"], f"{where}.members")
        for member in members:
            _need(
                isinstance(member, str) and member in interfaces,
                where,
                f"member {member!r} is not a bound interface",
            )
            _need(
                interfaces[member]["group"] == name,
                where,
                f"member {member} says it is in {interfaces[member]['group']!r}",
            )
        _need(len(set(members)) == len(members), where, "a member twice")
        _need(
            item["upstream"] is None or item["upstream"] in members,
            where,
            f"upstream {item['upstream']!r} is not a member",
        )
        patterns = _list(item.get("patterns", []), f"{where}.patterns")
        _need(
            all(bool(check_member_pattern(p)) for p in patterns),
            where,
            f"bad pattern in {patterns}",
        )
        for prefix in _list(item["onlink_prefixes"], f"{where}.onlink_prefixes"):
            _need(
                isinstance(prefix, list)
                and len(prefix) == 3
                and isinstance(prefix[0], bytes)
                and len(prefix[0]) == 16
                and isinstance(prefix[1], int)
                and not isinstance(prefix[1], bool)
                and 0 <= prefix[1] <= 128
                and (prefix[2] is None or _is_number(prefix[2])),
                where,
                f"bad on-link prefix {prefix!r}",
            )
        groups[name] = item
    for name, item in interfaces.items():
        group = item["group"]
        _need(
            group is None or (group in groups and name in groups[group]["members"]),
            f"topology.interfaces[{name}]",
            f"group {group!r} does not list it",
        )
    return wire
