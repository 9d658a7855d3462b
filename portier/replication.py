"""State replication from the supervisor to the workers: every message and op, both ends.

The supervisor owns the state; each worker keeps a replica.  This module is the whole
protocol: the supervisor builds its messages with the constructors below (a snapshot
carries the whole topology and neighbor cache; a delta carries a list of changes,
numbered per worker), and a worker applies them with `Replica`, which also decides when
the replica is stale (a gap in the numbering, or a message it cannot apply) and asks for
a fresh snapshot.  A topology change ships the whole topology, except what the kernel
says of one interface (its hello and link reports: a host with hundreds of guests has
hundreds of them at start-up), which ships that interface alone; neighbors change often
and ship one entry at a time.  Every op is
checked before anything is applied: an unknown op is an error that makes the worker
resync, never something skipped.  No I/O: the worker sends what `Replica` asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from portier.groups import DisableReason, Group, Interface, Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.schema import SchemaError, neighbor_from_wire, neighbor_to_wire
from portier.status import Code, Status

Change = dict[str, Any]

OP_TOPOLOGY = "topology"
OP_INTERFACE = "interface"
OP_NEIGHBOR = "neighbor"
OP_NEIGHBOR_REMOVED = "neighbor_removed"
OP_FLUSH = "flush"
OPS = frozenset({OP_TOPOLOGY, OP_INTERFACE, OP_NEIGHBOR, OP_NEIGHBOR_REMOVED, OP_FLUSH})
# The seq a worker reports when it holds no replica.
NO_SEQ = -1


class UnknownOpError(SchemaError):
    """A delta carried an op this side does not know (a newer or broken supervisor)."""


def _invalid(message: str) -> SchemaError:
    return SchemaError(Status(Code.INVALID_ARGUMENT, message))


# --- topology in wire form --------------------------------------------------------------


def topology_to_wire(topology: Topology) -> dict[str, Any]:
    return {
        "nested": topology.nested,
        "loop_disable_s": topology.loop_disable_s,
        "kernel_answers": topology.kernel_answers,
        "interfaces": [interface_to_wire(i) for i in topology.interfaces.values()],
        "groups": [
            {
                "name": g.name,
                "members": list(g.members),
                "upstream": g.upstream,
                "ownership": g.ownership,
                "onlink_prefixes": [
                    [prefix, length, until] for (prefix, length), until in g.onlink_prefixes.items()
                ],
                "patterns": list(g.patterns),
            }
            for g in topology.groups.values()
        ],
    }


def interface_to_wire(i: Interface) -> dict[str, Any]:
    return {
        "name": i.name,
        "ifindex": i.ifindex,
        "mac": i.mac,
        "mtu": i.mtu,
        "addresses": sorted(i.addresses),
        "group": i.group,
        "disable_reasons": sorted(r.value for r in i.disable_reasons),
        "loop_disabled_until": i.loop_disabled_until,
        "bound_by": i.bound_by,
    }


def _typed(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise _invalid(f"bad topology: {what} has the wrong type")
    return value


def _address_bytes(value: object, sizes: tuple[int, ...], what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) not in sizes:
        raise _invalid(f"bad topology: {what} must be {' or '.join(map(str, sizes))} bytes")
    return value


def _time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _invalid(f"bad topology: {what} is not a time")
    return float(value)


def _interface_from_wire(item: dict[str, Any]) -> Interface:
    name = _typed(item["name"], str, "interface name")
    until = item["loop_disabled_until"]
    interface = Interface(
        name=name,
        ifindex=_typed(item["ifindex"], int, f"{name} ifindex"),
        mac=_address_bytes(item["mac"], (0, 6), f"{name} mac"),
        mtu=_typed(item["mtu"], int, f"{name} mtu"),
        addresses=frozenset(
            _address_bytes(a, (16,), f"{name} address")
            for a in _typed(item["addresses"], list, f"{name} addresses")
        ),
        group=item["group"] if item["group"] is None else _typed(item["group"], str, "group"),
        disable_reasons={DisableReason(r) for r in _typed(item["disable_reasons"], list, name)},
        loop_disabled_until=None if until is None else _time(until, f"{name} loop disable"),
    )
    bound_by = item.get("bound_by")  # absent from an older peer or state file
    interface.bound_by = None if bound_by is None else _typed(bound_by, str, f"{name} bound_by")
    interface.enabled = not interface.disable_reasons
    return interface


def _group_from_wire(item: dict[str, Any]) -> Group:
    name = _typed(item["name"], str, "group name")
    members = [_typed(m, str, f"{name} member") for m in _typed(item["members"], list, name)]
    upstream = item["upstream"]
    group = Group(name, members, None if upstream is None else _typed(upstream, str, "upstream"))
    group.ownership = _typed(item.get("ownership", True), bool, f"{name} ownership")
    for entry in _typed(item["onlink_prefixes"], list, f"{name} prefixes"):
        prefix, length, until = _typed(entry, list, f"{name} prefix")
        _typed(length, int, f"{name} prefix length")
        if not 0 <= length <= 128:
            raise _invalid(f"bad topology: {name} prefix length {length}")
        key = (_address_bytes(prefix, (16,), f"{name} prefix"), length)
        group.onlink_prefixes[key] = _time(until, f"{name} prefix lifetime")
    group.patterns = [_typed(p, str, f"{name} pattern") for p in item.get("patterns", [])]
    return group


def topology_from_wire(data: object) -> Topology:
    """A checked Topology from its wire form; SchemaError when anything is malformed."""
    try:
        if not isinstance(data, dict):
            raise _invalid("bad topology: not a map")
        interfaces = {i.name: i for i in map(_interface_from_wire, data["interfaces"])}
        groups = {g.name: g for g in map(_group_from_wire, data["groups"])}
        topology = Topology(
            nested=bool(_typed(data["nested"], bool, "nested")),
            loop_disable_s=_time(data["loop_disable_s"], "loop_disable_s"),
        )
        topology.kernel_answers = _typed(data.get("kernel_answers", False), bool, "kernel_answers")
    except (KeyError, TypeError, ValueError) as exc:
        raise _invalid(f"bad topology: {exc!r}") from None
    # The engine trusts these links (a member's interface, a member's group): check them.
    for group in groups.values():
        for member in group.members:
            if member not in interfaces or interfaces[member].group != group.name:
                raise _invalid(f"bad topology: member {member} of {group.name} is not bound to it")
        if group.upstream is not None and group.upstream not in group.members:
            raise _invalid(f"bad topology: upstream {group.upstream} is no member of {group.name}")
    for interface in interfaces.values():
        group_name = interface.group
        members = groups[group_name].members if group_name in groups else ()
        if group_name is not None and interface.name not in members:
            raise _invalid(f"bad topology: {interface.name} is in no group {group_name}")
    topology.interfaces.update(interfaces)
    topology.groups.update(groups)
    return topology


def apply_topology(topology: Topology, data: object) -> None:
    """Replace `topology`'s contents with the wire form, in place (the engine keeps it).

    Everything is checked first: on SchemaError `topology` is unchanged.
    """
    _replace_topology(topology, topology_from_wire(data))


def _replace_topology(topology: Topology, fresh: Topology) -> None:
    topology.interfaces.clear()
    topology.interfaces.update(fresh.interfaces)
    topology.groups.clear()
    topology.groups.update(fresh.groups)
    topology.nested = fresh.nested
    topology.loop_disable_s = fresh.loop_disable_s
    topology.kernel_answers = fresh.kernel_answers
    topology.invalidate()


# --- messages, supervisor -> worker ------------------------------------------------------


def snapshot_to_wire(topology: Topology, neighbors: NeighborCache) -> dict[str, Any]:
    return {
        "topology": topology_to_wire(topology),
        "neighbors": [neighbor_to_wire(n) for n in neighbors],
    }


def snapshot_message(seq: int, topology: Topology, neighbors: NeighborCache) -> dict[str, Any]:
    """The whole state; the deltas that follow are numbered from `seq` + 1."""
    return {"kind": "snapshot", "seq": seq, "state": snapshot_to_wire(topology, neighbors)}


def delta_message(seq: int, changes: list[Change]) -> dict[str, Any]:
    return {"kind": "delta", "seq": seq, "changes": changes}


def heartbeat_message() -> dict[str, Any]:
    return {"kind": "heartbeat"}


def resync_message(seq: int | None) -> dict[str, Any]:
    """Worker -> supervisor: send me a snapshot (`seq`: what I hold, None: nothing)."""
    return {"kind": "resync", "seq": NO_SEQ if seq is None else seq}


def change_topology(topology: Topology) -> Change:
    return {"op": OP_TOPOLOGY, "topology": topology_to_wire(topology)}


def change_interface(interface: Interface) -> Change:
    """One interface's own facts (link, addresses, disable reasons), its group unchanged."""
    return {"op": OP_INTERFACE, "interface": interface_to_wire(interface)}


def coalesce(changes: list[Change]) -> list[Change]:
    """The same changes with at most one topology op and one interface op per interface,
    leaving a replica as all of them in order would.

    A topology op carries the whole topology, so the last one's content goes at the first
    one's place (neighbor ops after it then find their interfaces), and interface ops
    made before it are in it already.  Of the interface ops after it, each interface's
    last one stands (they change nothing but that interface's own facts).
    """
    places = [i for i, change in enumerate(changes) if change.get("op") == OP_TOPOLOGY]
    last_topology = places[-1] if places else -1
    last_of: dict[str, int] = {}
    for i, change in enumerate(changes):
        if change.get("op") == OP_INTERFACE and i > last_topology:
            last_of[change["interface"]["name"]] = i
    kept_interfaces = set(last_of.values())
    merged = []
    for i, change in enumerate(changes):
        op = change.get("op")
        if op == OP_TOPOLOGY:
            if i == places[0]:
                merged.append(changes[last_topology])
        elif op == OP_INTERFACE:
            if i in kept_interfaces:
                merged.append(change)
        else:
            merged.append(change)
    return merged


def change_neighbor(neighbor: Neighbor) -> Change:
    return {"op": OP_NEIGHBOR, "neighbor": neighbor_to_wire(neighbor)}


def change_neighbor_removed(group: str, address: bytes) -> Change:
    return {"op": OP_NEIGHBOR_REMOVED, "group": group, "address": address}


def change_flush(group: str | None) -> Change:
    """Forget every neighbor (of one group)."""
    return {"op": OP_FLUSH, "group": group}


# --- applying, on the worker ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Op:
    op: str
    topology: Topology | None = None
    interface: Interface | None = None
    neighbor: Neighbor | None = None
    group: str | None = None
    address: bytes = b""


def _decode_change(change: object) -> _Op:
    if not isinstance(change, dict):
        raise _invalid("bad change: not a map")
    op = change.get("op")
    if op not in OPS:
        raise UnknownOpError(Status(Code.INVALID_ARGUMENT, f"unknown replication op {op!r}"[:200]))
    try:
        if op == OP_TOPOLOGY:
            return _Op(op, topology=topology_from_wire(change["topology"]))
        if op == OP_INTERFACE:
            item = _typed(change["interface"], dict, "interface")
            try:
                return _Op(op, interface=_interface_from_wire(item))
            except (TypeError, ValueError) as exc:
                raise _invalid(f"bad interface change: {exc!r}") from None
        if op == OP_NEIGHBOR:
            return _Op(op, neighbor=neighbor_from_wire(change["neighbor"]))
        group = change["group"]
        if op == OP_FLUSH:
            if group is not None and not isinstance(group, str):
                raise _invalid("bad flush: group must be a string or nil")
            return _Op(op, group=group)
        address = change["address"]
        if not isinstance(group, str) or not isinstance(address, bytes) or len(address) != 16:
            raise _invalid("bad neighbor_removed: group string and 16-byte address wanted")
        return _Op(op, group=group, address=address)
    except KeyError as exc:
        raise _invalid(f"bad {op}: missing {exc}") from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one message did to a replica, and what the worker must do about it."""

    applied: bool = False  # the replica changed
    topology_changed: bool = False
    # Neighbors stored or replaced: frames held for them may go now.
    neighbors: tuple[Neighbor, ...] = ()
    removed: tuple[tuple[str, bytes], ...] = ()  # (group, address)
    flushed: bool = False  # neighbors forgotten wholesale
    # Send resync_message(resync_seq): the replica is stale until the snapshot comes.
    resync: bool = False
    resync_seq: int | None = None
    error: Status | None = None
    unknown_op: bool = False


class Replica:
    """A worker's copy of the topology and neighbor cache, kept by snapshot and deltas.

    `seq` is None while the replica is stale (before the first snapshot, after a gap or
    a message that could not be applied): the worker must then neither forward nor
    answer with it.
    """

    def __init__(self, topology: Topology, neighbors: NeighborCache) -> None:
        self.topology = topology
        self.neighbors = neighbors
        self.seq: int | None = None

    @property
    def stale(self) -> bool:
        return self.seq is None

    def apply(self, message: dict[str, Any]) -> Outcome:
        """Apply a decoded snapshot or delta (schema.decode_worker checked its fields)."""
        held = self.seq
        try:
            if message["kind"] == "snapshot":
                return self._snapshot(message["seq"], message["state"])
            if message["kind"] == "delta":
                if held is None or message["seq"] != held + 1:
                    self.seq = None
                    return Outcome(resync=True, resync_seq=held)
                outcome = self._delta(message["changes"])
                self.seq = message["seq"]
                return outcome
            raise _invalid(f"{message['kind']} is no replication message")
        except SchemaError as exc:
            self.seq = None
            # Everything is checked before it is applied: the replica is unchanged.
            return Outcome(
                resync=True,
                error=exc.status,
                unknown_op=isinstance(exc, UnknownOpError),
            )

    def _snapshot(self, seq: int, state: object) -> Outcome:
        if not isinstance(state, dict) or not isinstance(state.get("neighbors"), list):
            raise _invalid("snapshot without neighbors")
        entries = [neighbor_from_wire(item) for item in state["neighbors"]]
        apply_topology(self.topology, state.get("topology"))
        self.neighbors.flush()
        for entry in sorted(entries, key=lambda e: e.last_seen):
            self.neighbors.put(entry)
        self.seq = seq
        return Outcome(applied=True, topology_changed=True, neighbors=tuple(entries), flushed=True)

    def _delta(self, changes: list[Any]) -> Outcome:
        ops = [_decode_change(change) for change in changes]  # all checked, then applied
        self._check_interface_ops(ops)
        topology_changed = flushed = False
        stored: list[Neighbor] = []
        removed: list[tuple[str, bytes]] = []
        for op in ops:
            if op.topology is not None:
                _replace_topology(self.topology, op.topology)
                topology_changed = True
            elif op.interface is not None:
                self.topology.interfaces[op.interface.name] = op.interface
                self.topology.invalidate()
                topology_changed = True
            elif op.neighbor is not None:
                self.neighbors.put(op.neighbor)
                stored.append(op.neighbor)
            elif op.op == OP_NEIGHBOR_REMOVED:
                assert op.group is not None
                self.neighbors.remove(op.group, op.address)
                removed.append((op.group, op.address))
            else:
                self.neighbors.flush(op.group)
                flushed = True
        return Outcome(
            applied=bool(ops),
            topology_changed=topology_changed,
            neighbors=tuple(stored),
            removed=tuple(removed),
            flushed=flushed,
        )

    def _check_interface_ops(self, ops: list[_Op]) -> None:
        """An interface op may change only an interface bound to the same group, as the
        replica will hold it by then; anything else is a replica out of step."""
        groups = {i.name: i.group for i in self.topology.interfaces.values()}
        for op in ops:
            if op.topology is not None:
                groups = {i.name: i.group for i in op.topology.interfaces.values()}
            elif op.interface is not None:
                name = op.interface.name
                if name not in groups or groups[name] != op.interface.group:
                    raise _invalid(f"bad interface change: {name} is not bound so here")


def apply_snapshot(topology: Topology, neighbors: NeighborCache, state: dict[str, Any]) -> None:
    """Replace the whole state with a snapshot's (restoring saved state, tests)."""
    outcome = Replica(topology, neighbors).apply({"kind": "snapshot", "seq": 0, "state": state})
    if outcome.error is not None:
        raise SchemaError(outcome.error)
