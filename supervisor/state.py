"""The authoritative proxy state: topology, neighbor cache, and the changes to replicate.

Every mutation goes through this class and returns the replication changes it caused,
so that the supervisor's main loop (the only writer) can ship them to the workers.
Reports from workers are checked here: a worker speaks only for its own interface and
that interface's current group.
"""

from __future__ import annotations

from typing import Any

from portier.config import Config
from portier.groups import DisableReason, Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.replication import (
    Change,
    change_flush,
    change_neighbor,
    change_neighbor_removed,
    change_topology,
)
from portier.schema import link_facts, neighbor_from_wire
from portier.status import OK, Status


class ProxyState:
    def __init__(self, config: Config) -> None:
        self.topology = Topology(nested=config.nested, loop_disable_s=config.loop_disable_seconds)
        self.neighbors = NeighborCache(
            capacity=config.neighbor_capacity, lifetime_s=config.neighbor_lifetime_seconds
        )

    def apply_config_groups(self, config: Config) -> Status:
        """Bind and group every interface the configuration names."""
        for group in config.groups:
            status = self.topology.create_group(group.name)
            if not status:
                return status.wrap(f"Failed to create group {group.name}")
            for name in group.interfaces:
                status = self.topology.bind(name)
                if not status:
                    return status.wrap(f"Failed to bind {name}")
                status = self.topology.add_to_group(
                    name, group.name, upstream=name == group.upstream
                )
                if not status:
                    return status.wrap(f"Failed to add {name} to {group.name}")
            for pattern in group.patterns:
                status = self.topology.add_pattern(pattern, group.name)
                if not status:
                    return status.wrap(f"Failed to add pattern {pattern} to {group.name}")
        return OK

    def topology_changed(self) -> list[Change]:
        return [change_topology(self.topology)]

    def forget_interface(self, name: str) -> list[Change]:
        """Neighbors learned through an interface that leaves its group go with it."""
        return [
            change_neighbor_removed(e.group, e.address)
            for e in self.neighbors.flush_interface(name)
        ]

    def forget_group(self, group: str) -> list[Change]:
        return [change_neighbor_removed(e.group, e.address) for e in self.neighbors.flush(group)]

    def flush(self, group: str | None) -> tuple[list[Change], int]:
        count = len(self.neighbors.flush(group))
        return [change_flush(group)], count

    # --- reports from workers --------------------------------------------------------

    def on_link(self, name: str, report: dict[str, Any]) -> list[Change]:
        """A worker's hello or link report; SchemaError (nothing applied) when malformed."""
        facts = link_facts(report)
        interface = self.topology.interfaces.get(name)
        if interface is None:
            return []
        self.topology.update_link(
            name,
            ifindex=facts.ifindex,
            mac=facts.mac,
            mtu=facts.mtu,
            addresses=facts.addresses,
        )
        present = facts.ifindex != 0
        self.topology.set_reason(name, DisableReason.NOT_PRESENT, not present)
        self.topology.set_reason(name, DisableReason.LINK_DOWN, present and not facts.up)
        return self.topology_changed()

    def on_learned(self, name: str, items: list[Any]) -> tuple[list[Change], list[Neighbor]]:
        """Accept the entries a worker learned on its own interface; others are refused."""
        interface = self.topology.interfaces.get(name)
        group = interface.group if interface else None
        changes: list[Change] = []
        accepted: list[Neighbor] = []
        for item in items:
            entry = neighbor_from_wire(item)
            if entry.interface != name or entry.group != group:
                continue
            previous = self.neighbors.get(entry.group, entry.address)
            if previous is not None:
                entry.first_seen = previous.first_seen
            self.neighbors.put(entry)
            accepted.append(entry)
            changes.append(change_neighbor(entry))
        return changes, accepted

    def on_loop(self, name: str, group: str, now: float) -> list[Change]:
        interface = self.topology.interfaces.get(name)
        if interface is None or interface.group != group:
            return []
        self.topology.detect_loop(name, now)
        return self.topology_changed()

    def on_prefix(
        self, name: str, group: str, prefix: bytes, length: int, valid_until: float
    ) -> list[Change]:
        interface = self.topology.interfaces.get(name)
        groups = self.topology.groups
        if interface is None or interface.group != group or groups[group].upstream != name:
            return []
        if len(prefix) != 16 or not 0 <= length <= 128:
            return []
        prefixes = groups[group].onlink_prefixes
        if valid_until:
            prefixes[(prefix, length)] = valid_until
        else:
            prefixes.pop((prefix, length), None)
        return self.topology_changed()

    # --- timers ------------------------------------------------------------------

    def expire(self, now: float) -> list[Change]:
        changes: list[Change] = [
            change_neighbor_removed(e.group, e.address) for e in self.neighbors.expire(now)
        ]
        prefixes_before = sum(len(g.onlink_prefixes) for g in self.topology.groups.values())
        released = self.topology.expire(now)
        prefixes_after = sum(len(g.onlink_prefixes) for g in self.topology.groups.values())
        if released or prefixes_after != prefixes_before:
            changes.extend(self.topology_changed())
        return changes
