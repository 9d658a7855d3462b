"""State replication from the supervisor to the workers, in wire form.

The supervisor owns the state; each worker keeps a replica.  A snapshot carries the
whole topology and neighbor cache; a delta carries a list of changes, numbered per
worker, so that a worker that sees a gap asks for a fresh snapshot.  The topology is
small (tens of interfaces), so a topology change ships the whole topology; neighbors
change often and ship one entry at a time.
"""

from __future__ import annotations

from typing import Any

from portier.groups import DisableReason, Group, Interface, Topology
from portier.neighbors import NeighborCache
from portier.schema import SchemaError, neighbor_from_wire, neighbor_to_wire
from portier.status import Code, Status


def topology_to_wire(topology: Topology) -> dict[str, Any]:
    return {
        "nested": topology.nested,
        "loop_disable_s": topology.loop_disable_s,
        "interfaces": [
            {
                "name": i.name,
                "ifindex": i.ifindex,
                "mac": i.mac,
                "mtu": i.mtu,
                "addresses": sorted(i.addresses),
                "group": i.group,
                "disable_reasons": sorted(r.value for r in i.disable_reasons),
                "loop_disabled_until": i.loop_disabled_until,
            }
            for i in topology.interfaces.values()
        ],
        "groups": [
            {
                "name": g.name,
                "members": list(g.members),
                "upstream": g.upstream,
                "onlink_prefixes": [
                    [prefix, length, until] for (prefix, length), until in g.onlink_prefixes.items()
                ],
            }
            for g in topology.groups.values()
        ],
    }


def apply_topology(topology: Topology, data: dict[str, Any]) -> None:
    """Replace `topology`'s contents with the wire form, in place (the engine keeps it)."""
    try:
        interfaces = {}
        for item in data["interfaces"]:
            interface = Interface(
                name=str(item["name"]),
                ifindex=int(item["ifindex"]),
                mac=bytes(item["mac"]),
                mtu=int(item["mtu"]),
                addresses=frozenset(bytes(a) for a in item["addresses"]),
                group=item["group"],
                disable_reasons={DisableReason(r) for r in item["disable_reasons"]},
                loop_disabled_until=item["loop_disabled_until"],
            )
            interface.enabled = not interface.disable_reasons
            interfaces[interface.name] = interface
        groups = {}
        for item in data["groups"]:
            group = Group(str(item["name"]), [str(m) for m in item["members"]], item["upstream"])
            for prefix, length, until in item["onlink_prefixes"]:
                group.onlink_prefixes[(bytes(prefix), int(length))] = float(until)
            groups[group.name] = group
        nested = bool(data["nested"])
        loop_disable_s = float(data["loop_disable_s"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(Status(Code.INVALID_ARGUMENT, f"bad topology: {exc!r}")) from None
    topology.interfaces.clear()
    topology.interfaces.update(interfaces)
    topology.groups.clear()
    topology.groups.update(groups)
    topology.nested = nested
    topology.loop_disable_s = loop_disable_s
    topology.invalidate()


def snapshot_to_wire(topology: Topology, neighbors: NeighborCache) -> dict[str, Any]:
    return {
        "topology": topology_to_wire(topology),
        "neighbors": [neighbor_to_wire(n) for n in neighbors],
    }


def apply_snapshot(topology: Topology, neighbors: NeighborCache, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or not isinstance(state.get("neighbors"), list):
        raise SchemaError(Status(Code.INVALID_ARGUMENT, "snapshot without neighbors"))
    entries = [neighbor_from_wire(item) for item in state["neighbors"]]
    apply_topology(topology, state.get("topology", {}))
    neighbors.flush()
    for entry in sorted(entries, key=lambda e: e.last_seen):
        neighbors.put(entry)


# Delta changes, each a small map:
#   {"op": "topology", "topology": {...}}
#   {"op": "neighbor", "neighbor": {...}}
#   {"op": "neighbor_removed", "group": str, "address": bytes}
def change_topology(topology: Topology) -> dict[str, Any]:
    return {"op": "topology", "topology": topology_to_wire(topology)}


def change_neighbor(neighbor: Any) -> dict[str, Any]:
    return {"op": "neighbor", "neighbor": neighbor_to_wire(neighbor)}


def change_neighbor_removed(group: str, address: bytes) -> dict[str, Any]:
    return {"op": "neighbor_removed", "group": group, "address": address}
