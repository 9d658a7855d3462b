"""Address ownership (RFC 6620, FCFS SAVI, is the model): who may claim an address.

The rules, all of them:
- Each (group, address) in the neighbor cache has one owner: the member interface and
  the MAC behind it.  The first valid claim takes a free address (a free claim).
- A claim is anything that would teach the cache the address: an NA's target, the
  source of an NS, RS, RA or Redirect, the target of a DAD probe, a proxied data
  packet's source.  The owner's own claims refresh its entry.
- Another member's (or another MAC's) claim never moves an owned entry by itself.  The
  claiming frame is dropped and counted (a DAD probe excepted: it is relayed as ever, so
  the newcomer sees the owner's defence), and the claim starts an owner check: a unicast
  NS to the address, out of the owner's member, sent by the proxy.
- Owner answers (anything from the owner's member and MAC for that address) within
  `probe_s` -> the claim is refused.  Owner silent -> the entry moves to the claimant,
  and the kernel fast path follows at once.  One check per address at a time, and
  while it runs nobody answers an NS for the address on its behalf (answers.py).  While a
  loop keeps the owner's member disabled the owner cannot be asked: claims are refused.
- A member owns at most `per_member_limit` addresses per group (the upstream, which
  speaks for a whole link, excepted); over it, its new claims are refused and counted,
  and nobody's entry is evicted to make room (neighbors.py states the capacity rule).
- Router addresses learned on the upstream stay with the upstream while the router
  answers, in every group.  A group with ownership switched off (its `ownership` flag)
  is last-writer-wins for everything else, as plain RFC 4389 learning is.
- Owner checks are rate-limited per claiming member (fairshare.py).

Where the check runs: in the supervisor, the only writer of the authoritative cache.  A
worker judges each claim against its replica (`judge`), drops what it must and reports
the claim.  The supervisor (`OwnerChecks`) marks the entry CHECKING, which replicates to
every worker, and asks the owner's worker to probe.  While an entry is CHECKING the
engine reports every frame its owner sends, so the answer reaches the supervisor as an
ordinary learned report; at the deadline the supervisor moves the entry and replicates
the move.  Workers never change an owner, so replicas only ever lag the supervisor by
a delta, never disagree with it.  No I/O, and time is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from portier.fairshare import TokenBuckets
from portier.groups import DisableReason, Topology
from portier.neighbors import Neighbor, NeighborCache

DEFAULT_PROBE_S = 1.0
DEFAULT_CHECKS_PER_S = 10.0
DEFAULT_CHECK_BURST = 20


class Verdict(Enum):
    FREE = "free"  # nobody owns it (or the group is last-writer-wins): learn it
    OWNER = "owner"  # its owner speaking: refresh
    CLAIM = "claim"  # owned by someone else: do not learn, report the claim
    OVER_QUOTA = "over_quota"  # free, but the member owns all it may


class ClaimOutcome(StrEnum):
    """The `outcome` label of portier_claims_total."""

    REFUSED = "refused"  # the owner answered
    MOVED = "moved"  # the owner was silent
    OVER_QUOTA = "over_quota"
    SOURCE_INVALID = "source_invalid"  # a data packet from someone else's address


def protected(topology: Topology, entry: Neighbor) -> bool:
    """Whether another member's claim must go through an owner check."""
    group = topology.groups.get(entry.group)
    if group is None:
        return True
    return group.ownership or (entry.is_router and entry.interface == group.upstream)


def quota_applies(topology: Topology, group: str, interface: str) -> bool:
    known = topology.groups.get(group)
    return known is None or (known.ownership and known.upstream != interface)


def judge(
    topology: Topology,
    neighbors: NeighborCache,
    group: str,
    address: bytes,
    interface: str,
    mac: bytes,
) -> Verdict:
    """What a claim of `address` by (`interface`, `mac`) may do to the cache."""
    entry = neighbors.get(group, address)
    if entry is None:
        if quota_applies(topology, group, interface) and neighbors.at_quota(group, interface):
            return Verdict.OVER_QUOTA
        return Verdict.FREE
    if entry.owned_by(interface, mac):
        return Verdict.OWNER
    return Verdict.CLAIM if protected(topology, entry) else Verdict.FREE


@dataclass(frozen=True, slots=True)
class Probe:
    """Ask the worker of `interface` to send an NS for `address` to `mac`."""

    group: str
    address: bytes
    interface: str
    mac: bytes


@dataclass(frozen=True, slots=True)
class Settled:
    """A claim decided: `neighbor` is the entry as it now stands (a copy)."""

    outcome: ClaimOutcome
    neighbor: Neighbor
    claimant: str
    claimant_mac: bytes


class OwnerChecks:
    """The supervisor's side: start checks, settle them on an answer or at the deadline."""

    def __init__(
        self,
        topology: Topology,
        neighbors: NeighborCache,
        *,
        probe_s: float = DEFAULT_PROBE_S,
        checks_per_s: float = DEFAULT_CHECKS_PER_S,
        check_burst: int = DEFAULT_CHECK_BURST,
    ) -> None:
        self.topology = topology
        self.neighbors = neighbors
        self.probe_s = probe_s
        self.buckets = TokenBuckets(checks_per_s, check_burst)
        self._deadlines: dict[tuple[str, bytes], float] = {}

    def claim(
        self, group: str, address: bytes, interface: str, mac: bytes, now: float
    ) -> Probe | Settled | None:
        """A member claimed an address: start a check (Probe), refuse it, or do nothing.

        Nothing happens for an address nobody owns or its owner claims (the learned
        report teaches those), nor while a check of it runs, nor past the claimant's
        rate limit.
        """
        entry = self.neighbors.get(group, address)
        checking = entry is not None and (group, address) in self._deadlines
        if entry is None or entry.owned_by(interface, mac) or checking:
            return None
        if not protected(self.topology, entry):
            return None
        owner = self.topology.interfaces.get(entry.interface)
        if owner is not None and DisableReason.LOOP_DETECTED in owner.disable_reasons:
            # A loop cut the owner's member off for a while: it cannot be asked, and it is
            # not gone.  Its address (most often the router's) stays with it.
            return Settled(ClaimOutcome.REFUSED, entry.copy(), interface, mac)
        if quota_applies(self.topology, group, interface) and self.neighbors.at_quota(
            group, interface
        ):
            return Settled(ClaimOutcome.OVER_QUOTA, entry.copy(), interface, mac)
        if not self.buckets.allow(interface, now):
            return None
        entry.claimant = interface
        entry.claimant_mac = mac
        entry.check_until = now + self.probe_s
        self.neighbors.touched(entry)
        self._deadlines[(group, address)] = entry.check_until
        return Probe(group, address, entry.interface, entry.mac)

    def owner_seen(self, entry: Neighbor) -> Settled | None:
        """The owner spoke for a CHECKING entry: the claim is refused."""
        if not entry.check_until:
            return None
        claimant, claimant_mac = entry.claimant, entry.claimant_mac
        self._end(entry)
        return Settled(ClaimOutcome.REFUSED, entry.copy(), claimant, claimant_mac)

    def due(self, now: float) -> list[Settled]:
        """Checks whose owner stayed silent: their entries move to the claimants."""
        settled = []
        for key, deadline in list(self._deadlines.items()):
            if deadline > now:
                continue
            del self._deadlines[key]
            entry = self.neighbors.get(*key)
            if entry is None or entry.check_until != deadline:
                continue  # expired, flushed or already settled meanwhile
            claimant, claimant_mac = entry.claimant, entry.claimant_mac
            outcome = ClaimOutcome.MOVED
            if quota_applies(self.topology, entry.group, claimant) and self.neighbors.at_quota(
                entry.group, claimant
            ):
                outcome = ClaimOutcome.OVER_QUOTA  # it filled up meanwhile
                self._end(entry)
            else:
                self.neighbors.move(entry, claimant, claimant_mac, now)
            settled.append(Settled(outcome, entry.copy(), claimant, claimant_mac))
        return settled

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def _end(self, entry: Neighbor) -> None:
        self._deadlines.pop((entry.group, entry.address), None)
        entry.claimant = ""
        entry.claimant_mac = b""
        entry.check_until = 0.0
        self.neighbors.touched(entry)
