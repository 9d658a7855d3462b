"""The proxy's own answer to a multicast NS: a frozen table, and the rules that answer from it.

A multicast NS for a neighbor seen in the last ANSWER_FRESH_S behind another enabled
member of the ingress's group is answered by the proxy: a solicited NA, override clear,
naming the ingress's MAC (the answer the neighbor's own NA would bring back through the
proxy anyway, one round trip later).  DAD probes (from the unspecified address) are never
answered: the owner must defend its address itself.  Nor is a target whose owner is being
checked (ownership.py): until the check settles, the proxy does not know which member
the address lives behind, so the NS is relayed and the owner (or the claimant) answers.

The worker answers from a thread of its own, ahead of everything else, while its main
thread keeps changing the replica.  So that thread never reads the live topology or
neighbor cache: the main thread builds an `AnswerTable` (the ingress's MAC, the MACs of
every bound interface, and for each answerable target its member, MAC, router flag and
when it was last seen) and publishes it whole by swapping one reference;
`EarlyAnswers.answer` reads only the table it finds there.  `AnswerTables` keeps the
table current as neighbors change, one entry at a time, rebuilding it whole only when
the topology changed.  Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from portier.addresses import ALL_NODES, UNSPECIFIED, multicast_mac
from portier.fairshare import MEMBER_WORK_BURST, MEMBER_WORK_PER_S, TokenBuckets
from portier.frame import (
    DST,
    DST_MAC,
    ETHERTYPE,
    ETHERTYPE_IPV6_BYTES,
    HOP_LIMIT_OFFSET,
    L4_OFFSET,
    NEXT_HEADER_OFFSET,
    NH_ICMPV6,
    PAYLOAD_LENGTH_OFFSET,
    SRC,
    SRC_MAC,
    VERSION_OFFSET,
    IPv6Header,
    build_frame,
)
from portier.groups import Topology
from portier.ndmsg import (
    MIN_LENGTH,
    NA_FLAG_OVERRIDE,
    NA_FLAG_ROUTER,
    NA_FLAG_SOLICITED,
    NA_FLAGS_OFFSET,
    TARGET_OFFSET,
    LinkLayerAddressOption,
    NDType,
    NeighborAdvertisement,
    OptionType,
    encode_nd,
)
from portier.neighbors import Neighbor, NeighborCache
from portier.validation import ND_HOP_LIMIT, solicitation_asker_mac

# A multicast NS is answered on a neighbor's behalf when it was seen this recently
# (workers report a neighbor they keep seeing at least every minute: neighbors.py).
ANSWER_FRESH_S = 300.0
ANSWER_MEMO_MAX = 1024  # answers remembered by the NS frame they answered
_NS_TARGET = slice(L4_OFFSET + TARGET_OFFSET, L4_OFFSET + TARGET_OFFSET + 16)
_NS_END = L4_OFFSET + MIN_LENGTH[NDType.NEIGHBOR_SOLICITATION]
_ICMP_TYPE_OFFSET = L4_OFFSET
_DST_FIRST_OFFSET = DST.start
_ANSWER_FLAGS_OFFSET = L4_OFFSET + NA_FLAGS_OFFSET  # in the answer, right after IPv6
# The one NS the BPF path answers: nothing but a source link-layer address option.
_KERNEL_NS_LEN = _NS_END + 8


def kernel_answers(frame: bytes) -> bool:
    """Whether the kernel's BPF path answers this multicast NS itself when it runs (then
    neither the answer thread nor the engine may answer it again): its one shape, the
    NS with only a source link-layer address option, as hosts send them."""
    return (
        len(frame) == _KERNEL_NS_LEN
        and frame[_NS_END] == OptionType.SOURCE_LINK_LAYER
        and frame[_NS_END + 1] == 1
    )


def answers_early(frame: bytes) -> bool:
    """Whether a frame is one the early answer looks at: a multicast NS right after the
    IPv6 header (the worker's answer socket filters the same)."""
    return (
        len(frame) >= _NS_END
        and frame[NEXT_HEADER_OFFSET] == NH_ICMPV6
        and frame[_ICMP_TYPE_OFFSET] == NDType.NEIGHBOR_SOLICITATION
        and frame[_DST_FIRST_OFFSET] == 0xFF
        and frame[ETHERTYPE] == ETHERTYPE_IPV6_BYTES
    )


def answer_frame(
    ingress_mac: bytes, target: bytes, is_router: bool, asker: bytes, asker_mac: bytes
) -> bytes:
    """The NA the proxy sends out of the ingress for `target` to `asker`."""
    flags = NA_FLAG_SOLICITED | (NA_FLAG_ROUTER if is_router else 0)
    answer = NeighborAdvertisement(
        target, flags, (LinkLayerAddressOption(OptionType.TARGET_LINK_LAYER, ingress_mac),)
    )
    icmp = encode_nd(answer, target, asker)
    header = IPv6Header(target, asker, NH_ICMPV6, ND_HOP_LIMIT, len(icmp))
    return build_frame(asker_mac, ingress_mac, header, icmp)


def announcement_frame(upstream_mac: bytes, target: bytes, is_router: bool) -> bytes:
    """The unsolicited NA (override set) to all-nodes that names the upstream's MAC for
    `target`: a peer still holding another MAC for it (a VM that migrated here) is
    corrected at once (RFC 4861 §7.2.6); a peer without an entry creates none."""
    flags = NA_FLAG_OVERRIDE | (NA_FLAG_ROUTER if is_router else 0)
    advert = NeighborAdvertisement(
        target, flags, (LinkLayerAddressOption(OptionType.TARGET_LINK_LAYER, upstream_mac),)
    )
    icmp = encode_nd(advert, target, ALL_NODES)
    header = IPv6Header(target, ALL_NODES, NH_ICMPV6, ND_HOP_LIMIT, len(icmp))
    return build_frame(multicast_mac(ALL_NODES), upstream_mac, header, icmp)


def answerable(topology: Topology, ingress: str, entry: Neighbor | None) -> bool:
    """Whether the proxy speaks for `entry` on `ingress`: it lives behind another enabled
    member of the ingress's group and no owner check of it runs (freshness is the
    caller's, it depends on `now`)."""
    iface = topology.interfaces.get(ingress)
    if entry is None or iface is None or entry.interface == ingress or entry.group != iface.group:
        return False
    if entry.check_until:
        return False
    owner = topology.interfaces.get(entry.interface)
    return owner is not None and owner.enabled and owner.group == iface.group


class AnswerTarget(NamedTuple):
    member: str  # the member the neighbor lives behind
    mac: bytes
    is_router: bool
    last_seen: float


@dataclass(frozen=True, slots=True)
class AnswerTable:
    """Everything the early answer reads, frozen: built by one thread, read by another."""

    ingress: str
    enabled: bool
    mac: bytes  # the ingress's
    own_macs: frozenset[bytes]  # every bound interface's: a frame from one is our echo
    targets: Mapping[bytes, AnswerTarget]  # read-only
    kernel_answers: bool = False  # the BPF path answers NS of the kernel's shape


EMPTY_TARGETS: Mapping[bytes, AnswerTarget] = MappingProxyType({})


def build_answer_table(topology: Topology, neighbors: NeighborCache, ingress: str) -> AnswerTable:
    """The table for `ingress` from the whole state (AnswerTables keeps one current)."""
    tables = AnswerTables(ingress)
    return tables.publish(topology, neighbors)


class AnswerTables:
    """The main thread's side: keeps the answerable targets of one ingress and publishes
    a frozen copy after each batch of changes."""

    def __init__(self, ingress: str) -> None:
        self.ingress = ingress
        self._targets: dict[bytes, AnswerTarget] = {}
        self._rebuild = True
        self._changed = True
        self._evicted = -1
        self._published: AnswerTable | None = None

    def topology_changed(self) -> None:
        """Members, their state or MACs changed (or everything did): rebuild whole."""
        self._rebuild = True

    def neighbor_changed(self, topology: Topology, entry: Neighbor) -> None:
        """`entry` was stored, learned or moved: keep its one line of the table current."""
        if self._rebuild:
            return
        iface = topology.interfaces.get(self.ingress)
        if iface is None or entry.group != iface.group:
            return
        if answerable(topology, self.ingress, entry):
            self._targets[entry.address] = AnswerTarget(
                entry.interface, entry.mac, entry.is_router, entry.last_seen
            )
            self._changed = True
        elif self._targets.pop(entry.address, None) is not None:
            self._changed = True

    def neighbor_removed(self, group: str, address: bytes) -> None:
        if not self._rebuild and self._targets.pop(address, None) is not None:
            self._changed = True

    def publish(self, topology: Topology, neighbors: NeighborCache) -> AnswerTable:
        """The current table: the same object as last time when nothing changed."""
        if neighbors.evicted != self._evicted:  # evictions are silent: look again
            self._evicted = neighbors.evicted
            self._rebuild = True
        if self._rebuild:
            self._rebuild = False
            self._changed = True
            self._targets = {
                entry.address: AnswerTarget(
                    entry.interface, entry.mac, entry.is_router, entry.last_seen
                )
                for entry in neighbors
                if answerable(topology, self.ingress, entry)
            }
        if self._changed or self._published is None:
            self._changed = False
            iface = topology.interfaces.get(self.ingress)
            enabled = iface is not None and iface.enabled and bool(iface.mac)
            self._published = AnswerTable(
                self.ingress,
                enabled,
                iface.mac if iface is not None else b"",
                topology.own_macs(),
                MappingProxyType(dict(self._targets)) if enabled else EMPTY_TARGETS,
                topology.kernel_answers,
            )
        return self._published


class EarlyAnswers:
    """The answering thread's side: answers from the table last published to it.

    `publish` (main thread) swaps the reference; `answer` (answer thread) reads it once
    per frame.  The memo, the counters and the member's bucket (fair sharing: answers
    sent on the ingress member's behalf are rate-limited as the engine's are) belong to
    the answering thread alone.
    """

    def __init__(
        self, rate_per_s: float = MEMBER_WORK_PER_S, burst: int = MEMBER_WORK_BURST
    ) -> None:
        self.table: AnswerTable | None = None  # None: stale, answer nothing
        self._memo: dict[bytes, bytes] = {}
        self._bucket = TokenBuckets(rate_per_s, burst, max_keys=1)
        self.counters: dict[str, int] = {"answered": 0, "answers_limited": 0}

    def publish(self, table: AnswerTable | None) -> None:
        self.table = table

    def answer(self, frame: bytes, now: float) -> bytes | None:
        """The NA to send for `frame`, or None (then the main loop judges it in full).

        The table is asked first; only then is the NS checked: the frame rules of the
        engine, and validation.py's NS rules through `solicitation_asker_mac`.  An asker
        that resolves the same target again sends the very same bytes, so answers are
        remembered by the NS they answered: whether those bytes are valid never changes,
        and what the table says (the target still fresh, the ingress MAC, the R flag, the
        sender not one of ours) is checked again each time.
        """
        table = self.table
        if table is None or not table.enabled or not answers_early(frame):
            return None
        if table.kernel_answers and kernel_answers(frame):
            return None
        target = table.targets.get(frame[_NS_TARGET])
        if target is None or now - target.last_seen > ANSWER_FRESH_S:
            return None
        source_mac = frame[SRC_MAC]
        if source_mac in table.own_macs:
            return None
        known = self._memo.get(frame)
        if (
            known is not None
            and known[SRC_MAC] == table.mac
            and bool(known[_ANSWER_FLAGS_OFFSET] & NA_FLAG_ROUTER) == target.is_router
        ):
            return self._paced(known, table.ingress, now)
        end = L4_OFFSET + (frame[PAYLOAD_LENGTH_OFFSET] << 8 | frame[PAYLOAD_LENGTH_OFFSET + 1])
        asker = frame[SRC]
        if (
            end < _NS_END
            or end > len(frame)
            or frame[VERSION_OFFSET] >> 4 != 6
            or asker == UNSPECIFIED  # a DAD probe: never answered
            or (not frame[0] & 1 and frame[DST_MAC] != table.mac)
        ):
            return None
        asker_mac = solicitation_asker_mac(
            frame[HOP_LIMIT_OFFSET], asker, frame[DST], frame[L4_OFFSET:end]
        )
        if asker_mac is None:
            return None
        answer = answer_frame(
            table.mac, frame[_NS_TARGET], target.is_router, asker, asker_mac or source_mac
        )
        if len(self._memo) >= ANSWER_MEMO_MAX:
            self._memo.clear()
        self._memo[frame] = answer
        return self._paced(answer, table.ingress, now)

    def _paced(self, answer: bytes, ingress: str, now: float) -> bytes | None:
        """`answer`, if the member has a token for it (else the main loop may answer
        from the engine's own bucket)."""
        if not self._bucket.allow(ingress, now):
            self.counters["answers_limited"] += 1
            return None
        self.counters["answered"] += 1
        return answer
