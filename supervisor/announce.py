"""Announcements: an unsolicited NA on the upstream when a guest address arrives or moves.

A router that already holds an entry for the address (a VM that migrated here from
another host on the same link, a guest that moved to another member) keeps sending to the
old MAC until its entry goes stale and NUD probes it.  One NA with the override flag,
naming the upstream's MAC, corrects that entry at once; Linux does not create an entry
from it, so an address the router never used costs nothing (RFC 4861 §7.2.6).

The supervisor decides (it sees every learn and every ownership move); the upstream's
worker builds and sends the frame (`announce` command).  Each member's announcements
draw on its own token bucket, so a guest that churns addresses cannot flood the upstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from portier.fairshare import TokenBuckets
from portier.groups import Topology
from portier.neighbors import Neighbor
from portier.supervisor.channel import WorkerChannel
from portier.supervisor.stats import SupervisorStats

RATE_PER_S = 5.0  # per member, sustained
BURST = 32  # per member: a VM that arrives with a handful of addresses says them all


class Announcer:
    def __init__(
        self,
        topology: Topology,
        channel: WorkerChannel,
        stats: SupervisorStats,
        enabled: Callable[[], bool],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topology = topology
        self.channel = channel
        self.stats = stats
        self.enabled = enabled
        self.clock = clock
        self.buckets = TokenBuckets(RATE_PER_S, BURST)

    async def arrived(self, entries: Iterable[Neighbor]) -> None:
        """Announce each entry that lives behind a downstream member of a group with an
        upstream (the upstream's own neighbors are the router's business)."""
        if not self.enabled():
            return
        now = self.clock()
        for entry in entries:
            group = self.topology.groups.get(entry.group)
            if group is None or not group.upstream or entry.interface == group.upstream:
                continue
            if not self.buckets.allow(entry.interface, now):
                self.stats.announcements[(entry.interface, "rate_limited")] += 1
                continue
            message = {
                "kind": "command",
                "command": "announce",
                "args": {"group": entry.group, "address": entry.address, "router": entry.is_router},
            }
            if await self.channel.send(group.upstream, message):
                self.stats.announcements[(entry.interface, "sent")] += 1
