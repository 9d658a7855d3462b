"""What follows an address claim in the supervisor: probes out, outcomes announced.

The decisions are the state's (ownership rules in portier/ownership.py, applied by
ProxyState); this module carries them out: it asks the owner's worker to send the owner
check, counts every outcome for the metrics (portier_claims_total), publishes a `claim`
event for each refused claim and each move, and logs one rate-limited line per member
naming the member, the MAC and the address.  A move reprograms the fast path at once,
so the kernel forwards to the new owner without waiting for the timers, and is announced
on the upstream (announce.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from portier import logs
from portier.addresses import format_ipv6, format_mac
from portier.ownership import ClaimOutcome, Probe, Settled
from portier.supervisor.announce import Announcer
from portier.supervisor.channel import WorkerChannel
from portier.supervisor.commit import Committer
from portier.supervisor.state import Change
from portier.supervisor.stats import SupervisorStats

log = logging.getLogger("portier.supervisor")


class ClaimDesk:
    def __init__(
        self,
        channel: WorkerChannel,
        committer: Committer,
        stats: SupervisorStats,
        announcer: Announcer,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.announcer = announcer
        self.channel = channel
        self.committer = committer
        self.stats = stats
        self.clock = clock
        self.log_limit = logs.RateLimiter(burst=5, interval_s=60.0)

    async def carry_out(
        self, changes: list[Change], settled: list[Settled], probes: list[Probe]
    ) -> None:
        """Replicate first (every replica shows CHECKING or the new owner), then probe."""
        if changes:
            self.committer.neighbors_dirty = True
            await self.channel.broadcast(changes)
        if probes:
            # The kernel's NS responder must stop answering for the address before its
            # owner is asked (answers.py: nobody answers for an address under a check).
            await self.committer.sync_fastpath()
        for probe in probes:
            self.stats.probes[probe.interface] += 1
            await self.channel.send(
                probe.interface,
                {
                    "kind": "command",
                    "command": "probe",
                    "args": {"group": probe.group, "address": probe.address},
                },
            )
        moved = False
        for outcome in settled:
            moved = moved or outcome.outcome is ClaimOutcome.MOVED
            self._announce(outcome)
        if moved:
            await self.committer.sync_fastpath()
            await self.announcer.arrived(
                s.neighbor for s in settled if s.outcome is ClaimOutcome.MOVED
            )
        elif changes:
            self.committer.mark_fastpath_dirty()

    def _announce(self, settled: Settled) -> None:
        entry = settled.neighbor
        self.stats.claims[(settled.claimant, settled.outcome.value)] += 1
        self.committer.publish(
            "claim",
            outcome=settled.outcome.value,
            group=entry.group,
            address=entry.address,
            interface=entry.interface,
            mac=entry.mac,
            claimant=settled.claimant,
            claimant_mac=settled.claimant_mac,
        )
        allowed, held = self.log_limit.allow(f"claim {settled.claimant}", self.clock())
        if allowed:
            log.warning(
                "claim %s: %s (%s) claimed %s",
                settled.outcome.value,
                settled.claimant,
                format_mac(settled.claimant_mac) if settled.claimant_mac else "?",
                format_ipv6(entry.address),
                extra={
                    "fields": {
                        "group": entry.group,
                        "owner": entry.interface,
                        "owner_mac": format_mac(entry.mac),
                        "suppressed": held,
                    }
                },
            )
