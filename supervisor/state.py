"""The authoritative proxy state: topology, neighbor cache, and the changes to replicate.

Every mutation goes through this class and returns the replication changes it caused,
so that the supervisor's main loop (the only writer) can ship them to the workers.
Reports from workers are checked here: a worker speaks only for its own interface and
that interface's current group.  Address ownership is enforced here too (the rules are
portier/ownership.py's): a learned report that would move an owned entry is a claim, a
claim starts an owner check, an owner heard during its check refuses the claim, and
`settle_due` moves the entries whose owners stayed silent.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from portier.config import Config
from portier.groups import DisableReason, Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.ownership import ClaimOutcome, OwnerChecks, Probe, Settled, protected, quota_applies
from portier.replication import (
    Change,
    change_flush,
    change_interface,
    change_neighbor,
    change_neighbor_removed,
    change_topology,
)
from portier.schema import link_facts, neighbor_from_wire
from portier.status import OK, Status


class LearnedOutcome(NamedTuple):
    changes: list[Change]
    accepted: list[Neighbor]
    settled: list[Settled]  # claims refused (their owner spoke) or over quota
    probes: list[Probe]  # owner checks to send (a replica was behind: a claim after all)
    arrived: list[Neighbor]  # accepted entries that are new or behind another member now


class ProxyState:
    def __init__(self, config: Config) -> None:
        self.topology = Topology(
            nested=config.nested,
            loop_disable_s=config.loop_disable_seconds,
            last_writer_wins=config.last_writer_wins,
        )
        self.neighbors = NeighborCache(
            capacity=config.neighbor_capacity,
            lifetime_s=config.neighbor_lifetime_seconds,
            per_member_limit=config.per_member_limit,
        )
        self.checks = OwnerChecks(
            self.topology, self.neighbors, probe_s=config.claim_probe_ms / 1000.0
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
        return [change_interface(interface)]  # only its own facts changed

    def on_learned(self, name: str, items: list[Any], now: float) -> LearnedOutcome:
        """Accept the entries a worker learned on its own interface, as ownership allows."""
        interface = self.topology.interfaces.get(name)
        group = interface.group if interface else None
        outcome = LearnedOutcome([], [], [], [], [])
        for item in items:
            entry = neighbor_from_wire(item)
            if entry.interface != name or entry.group != group:
                continue
            # Only the supervisor starts and ends checks: a worker's word on them is void.
            entry.claimant, entry.claimant_mac, entry.check_until = "", b"", 0.0
            previous = self.neighbors.get(entry.group, entry.address)
            if previous is None:
                if quota_applies(self.topology, entry.group, name) and self.neighbors.at_quota(
                    entry.group, name
                ):
                    outcome.settled.append(Settled(ClaimOutcome.OVER_QUOTA, entry, name, entry.mac))
                    continue
            elif not previous.owned_by(name, entry.mac) and protected(self.topology, previous):
                # The worker's replica was behind the owner: a claim, not a learn.
                started = self.checks.claim(entry.group, entry.address, name, entry.mac, now)
                self._claim_started(started, outcome.changes, outcome.settled, outcome.probes)
                continue
            else:
                entry.first_seen = previous.first_seen
                refused = self.checks.owner_seen(previous)
                if refused is not None:
                    outcome.settled.append(refused)
            self.neighbors.put(entry)
            outcome.accepted.append(entry)
            outcome.changes.append(change_neighbor(entry))
            if previous is None or previous.interface != name:
                outcome.arrived.append(entry)
        return outcome

    def on_claim(
        self, name: str, group: str, address: bytes, mac: bytes, now: float
    ) -> tuple[list[Change], list[Settled], list[Probe]]:
        """A worker saw its member claim an address someone else owns."""
        interface = self.topology.interfaces.get(name)
        changes: list[Change] = []
        settled: list[Settled] = []
        probes: list[Probe] = []
        if interface is None or interface.group != group or len(address) != 16 or len(mac) != 6:
            return changes, settled, probes
        started = self.checks.claim(group, address, name, mac, now)
        self._claim_started(started, changes, settled, probes)
        return changes, settled, probes

    def _claim_started(
        self,
        started: Probe | Settled | None,
        changes: list[Change],
        settled: list[Settled],
        probes: list[Probe],
    ) -> None:
        if isinstance(started, Probe):
            entry = self.neighbors.get(started.group, started.address)
            assert entry is not None
            changes.append(change_neighbor(entry))  # CHECKING, everywhere
            probes.append(started)
        elif started is not None:
            settled.append(started)

    def settle_due(self, now: float) -> tuple[list[Change], list[Settled]]:
        """Owner checks that ran out: moved (or refused, the claimant being over quota)."""
        settled = self.checks.due(now)
        changes = [
            change_neighbor(entry)
            for s in settled
            if (entry := self.neighbors.get(s.neighbor.group, s.neighbor.address)) is not None
        ]
        return changes, settled

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
