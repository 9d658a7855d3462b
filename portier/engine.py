"""The forwarding engine: every forwarding rule of the proxy, and nothing but them.

`Engine.handle_frame(ingress, frame, now)` takes a frame received on a bound interface
and returns actions: frames to transmit and where, neighbors learned, loops detected,
drops with their reason.  `poll(now)` runs the timers (hold-queue solicitations and
timeouts, neighbor expiry, loop-disable expiry) and `next_deadline()` says when it next
needs to run.  No sockets, no clocks, no logging: the worker and the tests drive it.

The rules (RFC 4389, with Portier's groups):
- A frame addressed to an address of the receiving interface is left to the kernel.
- Multicast goes to every other forwarding member of the ingress's group, to the
  group's 33:33 MAC; a multicast NS (DAD included) for a target the cache places behind
  one member, seen lately and not under an owner check, goes to that member alone.
  Unicast goes where the neighbor cache says, never back out of the ingress.  Only the
  Ethernet header changes, except ND messages, which are rewritten (rewrite.py).  The
  hop limit is never touched.
- A unicast destination that is not on-link (not link-local, outside every prefix the
  upstream's RAs announced on-link) goes to the group's router on the upstream.
- An on-link destination not yet known is held (holdqueue.py) while the proxy solicits
  it out of the other members, on behalf of the sender: the NS carries the held packet's
  source address and the egress MAC, so the answer comes back through the proxy.
- The sources of valid ND messages and of proxied packets are learned (neighbors.py),
  and so are the router addresses the upstream's RAs name (prefix options with R set,
  and on-link RDNSS servers nobody holds yet),
  under the ownership rules (ownership.py): a free address goes to its first claimant
  within the member's quota; a frame claiming an address another member or MAC owns
  does not move it: it is dropped (`claim_refused` for ND, `source_invalid` for data;
  a DAD probe is still relayed) and reported as a `Claimed` action, and the supervisor
  checks the owner.  While an entry's owner is being checked, everything the owner sends
  for it is reported (that is its answer).  `probe()` builds the owner check's NS.
- The proxy's own work on a member's behalf (solicitations for its held frames, owner
  check reports, early answers) is rate-limited per member (fairshare.py).
- A multicast NS for a neighbor seen in the last ANSWER_FRESH_S behind another member,
  and not under an owner check, is answered by the proxy (its own MAC, override clear)
  and still forwarded (answers.py holds the answer, and answers it ahead of everything
  else for the worker).
- An RA on a member other than the upstream, or a P-flagged RA on the upstream outside
  nested mode, is a loop: that member is disabled for the loop-disable time.  A group
  with no upstream has no router side: its RAs are proxied, not treated as loops.
- A unicast packet larger than the egress MTU is dropped and its sender gets an ICMPv6
  Packet Too Big (RFC 4389 §4.1.1), rate-limited.
"""

from __future__ import annotations

from typing import NamedTuple

from portier.addresses import (
    UNSPECIFIED,
    in_prefix,
    is_link_local,
    multicast_mac,
    solicited_node,
)
from portier.answers import (
    ANSWER_FRESH_S,
    announcement_frame,
    answer_frame,
    answerable,
    kernel_answers,
)
from portier.checksum import upper_layer_checksum
from portier.drops import DropReason, FrameError
from portier.fairshare import MEMBER_WORK_BURST, MEMBER_WORK_PER_S, TokenBuckets
from portier.frame import (
    DST,
    DST_MAC,
    ETH_HLEN,
    ETHERTYPE_OFFSET,
    EXTENSION_HEADERS,
    HOP_LIMIT_OFFSET,
    L3_OFFSET,
    L4_OFFSET,
    NEXT_HEADER_OFFSET,
    NH_ICMPV6,
    PAYLOAD_LENGTH_OFFSET,
    SRC,
    SRC_MAC,
    VERSION_OFFSET,
    IPv6Header,
    build_frame,
    is_jumbogram,
    locate_upper_layer,
)
from portier.groups import Interface, Topology
from portier.holdqueue import HeldFrame, HoldQueue
from portier.ndmsg import (
    CHECKSUM_OFFSET,
    LinkLayerAddressOption,
    NDType,
    NeighborAdvertisement,
    NeighborSolicitation,
    OptionType,
    PrefixInformation,
    RecursiveDnsServers,
    RouterAdvertisement,
    encode_nd,
)
from portier.neighbors import Neighbor, NeighborCache
from portier.ownership import Verdict, judge
from portier.rewrite import rewrite_nd
from portier.validation import ND_HOP_LIMIT, validate_nd

IPV6_MIN_MTU = 1280
# The packet path's offsets, derived once from frame.py's (module constants are cheap to
# read; slices are built once, here).
_ETHERTYPE_HIGH = ETHERTYPE_OFFSET
_ETHERTYPE_LOW = ETHERTYPE_OFFSET + 1
_PAYLOAD_LENGTH_LOW = PAYLOAD_LENGTH_OFFSET + 1
_DST_MAC_FIRST = DST_MAC.start  # its group bit says multicast
_ND_FIRST = int(NDType.ROUTER_SOLICITATION)
_ND_LAST = int(NDType.REDIRECT)
_ICMP_TYPE_OFFSET = L4_OFFSET
_AFTER_MACS = slice(ETHERTYPE_OFFSET, None)  # all a forwarded frame keeps
_PTB_QUOTE_MAX = IPV6_MIN_MTU - 40 - 8
_INFINITE_LIFETIME = 0xFFFFFFFF
_FOREVER = float("inf")
_PI_FLAG_ROUTER_ADDRESS = 0x20  # RFC 6275 §7.2: the prefix field is the router's address


class Transmit(NamedTuple):
    interface: str
    frame: bytes
    # The caller's `meta` of the received frame when everything after the Ethernet
    # addresses is that frame's bytes unchanged (offload metadata still applies); else None.
    meta: object = None


class Dropped(NamedTuple):
    interface: str
    reason: DropReason
    frames: int = 1  # how many frames went for this one reason


class Learned(NamedTuple):
    neighbor: Neighbor  # a copy, safe to keep


class Claimed(NamedTuple):
    """A member claimed an address someone else owns: the supervisor checks the owner."""

    group: str
    address: bytes
    interface: str
    mac: bytes


class Expired(NamedTuple):
    neighbor: Neighbor


class LoopDetected(NamedTuple):
    interface: str
    group: str
    until: float


class LoopCleared(NamedTuple):
    interface: str


class PrefixLearned(NamedTuple):
    group: str
    prefix: bytes
    length: int
    valid_until: float  # 0 withdraws the prefix


Action = (
    Transmit | Dropped | Learned | Claimed | Expired | LoopDetected | LoopCleared | PrefixLearned
)


class Engine:
    def __init__(
        self,
        topology: Topology,
        neighbors: NeighborCache | None = None,
        hold: HoldQueue | None = None,
        *,
        ptb_rate_per_s: float = 10.0,
        ptb_burst: int = 20,
        member_work_per_s: float = MEMBER_WORK_PER_S,
        member_work_burst: int = MEMBER_WORK_BURST,
    ) -> None:
        self.topology = topology
        self.neighbors = neighbors if neighbors is not None else NeighborCache()
        self.hold = hold if hold is not None else HoldQueue()
        self._ptb_rate = ptb_rate_per_s
        self._ptb_burst = float(ptb_burst)
        self._ptb_tokens = float(ptb_burst)
        self._ptb_refilled_at = 0.0
        # Per member: solicitations for its held frames, claim reports, early answers.
        self.member_work = TokenBuckets(member_work_per_s, member_work_burst)
        self.counters = {
            "held": 0,
            "released": 0,
            "ptb_sent": 0,
            "solicits_sent": 0,
            "answered": 0,
            "claims_reported": 0,
            "probes_sent": 0,
            "announced": 0,
            "member_work_limited": 0,
        }

    # --- ingress -------------------------------------------------------------------

    def handle_frame(
        self,
        ingress: str,
        frame: bytes,
        now: float,
        *,
        segment_bytes: int = 0,
        meta: object = None,
        answered: bool = False,
    ) -> list[Action]:
        """Decide what to do with one received frame.

        `segment_bytes` is the IPv6 length of each segment when the frame is a GSO/GRO
        super-frame that the kernel will segment on egress; 0 for an ordinary frame.
        `meta` is opaque to the engine: it comes back on every Transmit that carries the
        frame's bytes unchanged (the worker keeps offload metadata in it).  `answered`
        says the caller already sent the early answer (answers.py) to this frame.
        """
        iface = self.topology.interfaces.get(ingress)
        if iface is None:
            return [Dropped(ingress, DropReason.UNKNOWN_INTERFACE)]
        if not iface.enabled:
            return [Dropped(ingress, DropReason.INGRESS_DISABLED)]
        size = len(frame)
        if size < L4_OFFSET:
            return [Dropped(ingress, DropReason.FRAME_TOO_SHORT)]
        if frame[_ETHERTYPE_HIGH] != 0x86 or frame[_ETHERTYPE_LOW] != 0xDD:
            return [Dropped(ingress, DropReason.NOT_IPV6)]
        if frame[VERSION_OFFSET] >> 4 != 6:
            return [Dropped(ingress, DropReason.BAD_IP_VERSION)]
        payload_length = frame[PAYLOAD_LENGTH_OFFSET] << 8 | frame[_PAYLOAD_LENGTH_LOW]
        if payload_length == 0 and is_jumbogram(frame):
            end = size  # BIG TCP: the length is in the hop-by-hop Jumbo Payload option
        else:
            end = L4_OFFSET + payload_length
            if end > size:
                return [Dropped(ingress, DropReason.TRUNCATED)]
            if end < size:
                frame = frame[:end]  # Ethernet padding
        if not frame[_DST_MAC_FIRST] & 1 and frame[DST_MAC] != iface.mac:
            return [Dropped(ingress, DropReason.NOT_FOR_US)]
        source_mac = frame[SRC_MAC]
        if source_mac in self.topology.own_macs():
            return [Dropped(ingress, DropReason.OWN_FRAME)]

        next_header = frame[NEXT_HEADER_OFFSET]
        if next_header == NH_ICMPV6:
            if end > L4_OFFSET and _ND_FIRST <= frame[L4_OFFSET] <= _ND_LAST:
                return self._handle_nd(iface, frame, L4_OFFSET, now, answered)
        elif next_header in EXTENSION_HEADERS:
            try:
                protocol, offset, fragmented, routed = locate_upper_layer(frame, next_header)
            except FrameError as exc:
                return [Dropped(ingress, exc.reason)]
            if protocol == NH_ICMPV6 and offset < end and _ND_FIRST <= frame[offset] <= _ND_LAST:
                if fragmented:
                    return [Dropped(ingress, DropReason.ND_FRAGMENTED)]
                if routed:
                    return [Dropped(ingress, DropReason.ND_ROUTING_HEADER)]
                return self._handle_nd(iface, frame, offset, now, answered)

        src = frame[SRC]
        if src[0] == 0xFF:
            return [Dropped(ingress, DropReason.MULTICAST_SOURCE)]
        group = iface.group
        assert group is not None  # an enabled interface is always in a group
        actions: list[Action] = []
        if src != UNSPECIFIED:
            entry = self.neighbors.get(group, src)
            if (
                entry is None
                or entry.interface != ingress
                or entry.mac != source_mac
                or entry.check_until
                or now - entry.last_seen >= 1.0
            ) and (entry is not None or self._on_link(group, src) is not False):
                refused = self._claim(group, src, ingress, source_mac, now, actions)
                if refused is not None:
                    if refused is DropReason.CLAIM_REFUSED:
                        refused = DropReason.SOURCE_INVALID
                    actions.append(Dropped(ingress, refused))
                    return actions
        dst = frame[DST]
        if dst in iface.addresses:
            actions.append(Dropped(ingress, DropReason.LOCAL_DESTINATION))
            return actions
        if dst[0] == 0xFF:
            self._fan_out(iface, frame, dst, -1, actions, meta)
            return actions
        self._forward_unicast(iface, frame, dst, -1, now, actions, segment_bytes, meta)
        return actions

    def _handle_nd(
        self, iface: Interface, frame: bytes, offset: int, now: float, answered: bool
    ) -> list[Action]:
        ingress = iface.name
        src = frame[SRC]
        dst = frame[DST]
        try:
            message = validate_nd(frame[HOP_LIMIT_OFFSET], src, dst, frame[offset:])
        except FrameError as exc:
            return [Dropped(ingress, exc.reason)]
        group = iface.group
        assert group is not None
        actions: list[Action] = []
        kind = message.type
        if kind == NDType.ROUTER_ADVERTISEMENT:
            assert isinstance(message, RouterAdvertisement)
            upstream = self.topology.groups[group].upstream
            if upstream is not None and (
                ingress != upstream or (message.proxy and not self.topology.nested)
            ):
                until = self.topology.detect_loop(ingress, now)
                return [
                    LoopDetected(ingress, group, until),
                    Dropped(ingress, DropReason.LOOP_DETECTED),
                ]
            if upstream == ingress:
                self._learn_prefixes(group, message, now, actions)
                self._learn_router_addresses(group, iface, frame, message, now, actions)

        source_mac = frame[SRC_MAC]
        refused: DropReason | None = None
        # An NA from its own target is learned once, below, with its flags.
        if src != UNSPECIFIED and not (
            kind == NDType.NEIGHBOR_ADVERTISEMENT and src == message.target  # type: ignore[union-attr]
        ):
            link_layer = _link_layer_option(message.options, OptionType.SOURCE_LINK_LAYER)
            refused = self._claim(
                group,
                src,
                ingress,
                link_layer or source_mac,
                now,
                actions,
                is_router=True if kind == NDType.ROUTER_ADVERTISEMENT else None,
            )
        if kind == NDType.NEIGHBOR_ADVERTISEMENT:
            assert isinstance(message, NeighborAdvertisement)
            link_layer = _link_layer_option(message.options, OptionType.TARGET_LINK_LAYER)
            refused = refused or self._claim(
                group,
                message.target,
                ingress,
                link_layer or source_mac,
                now,
                actions,
                confirmed=message.solicited,
                is_router=message.router,
            )
        elif kind == NDType.NEIGHBOR_SOLICITATION and src == UNSPECIFIED:
            # DAD: never learned, still relayed (the owner must see it to defend), and a
            # probe for someone else's address starts the owner check at once.
            assert isinstance(message, NeighborSolicitation)
            if (
                judge(self.topology, self.neighbors, group, message.target, ingress, source_mac)
                is Verdict.CLAIM
            ):
                self._report_claim(group, message.target, ingress, source_mac, now, actions)
        if refused is not None:
            actions.append(Dropped(ingress, refused))
            return actions

        if (
            kind == NDType.NEIGHBOR_SOLICITATION
            and dst[0] == 0xFF
            and not answered
            and not (self.topology.kernel_answers and kernel_answers(frame))
        ):
            assert isinstance(message, NeighborSolicitation)
            answer = self._answer_for_neighbor(iface, frame, message, now)
            if answer is not None:
                actions.append(answer)

        if dst in iface.addresses:
            actions.append(Dropped(ingress, DropReason.LOCAL_DESTINATION))
        elif dst[0] == 0xFF:
            only = None
            if kind == NDType.NEIGHBOR_SOLICITATION:
                assert isinstance(message, NeighborSolicitation)
                only = self._placed(iface, message.target, now)
            self._fan_out(iface, frame, dst, offset, actions, None, only)
        else:
            self._forward_unicast(iface, frame, dst, offset, now, actions, 0, None)
        return actions

    # --- egress --------------------------------------------------------------------

    def _fan_out(
        self,
        iface: Interface,
        frame: bytes,
        dst: bytes,
        icmp_offset: int,
        actions: list[Action],
        meta: object,
        only: Interface | None = None,
    ) -> None:
        """Out of every other forwarding member of the group (of `only`, when given)."""
        dst_mac = multicast_mac(dst)
        rest = frame[_AFTER_MACS]
        packet_bytes = len(frame) - ETH_HLEN
        sent = False
        assert iface.group is not None
        members = [only] if only is not None else self.topology.forwarding_members(iface.group)
        for member in members:
            if member is iface:
                continue
            if packet_bytes > member.mtu:
                actions.append(Dropped(member.name, DropReason.MTU_EXCEEDED))
                continue
            if icmp_offset < 0:
                actions.append(Transmit(member.name, dst_mac + member.mac + rest, meta))
            else:
                actions.append(
                    Transmit(member.name, rewrite_nd(frame, icmp_offset, member.mac, dst_mac))
                )
            sent = True
        if not sent:
            actions.append(Dropped(iface.name, DropReason.NO_EGRESS))

    def _placed(self, iface: Interface, target: bytes, now: float) -> Interface | None:
        """The one member a multicast NS (DAD too) for `target` needs to reach: the one
        the cache places it behind, seen lately and not under an owner check (RFC 4389
        §4.1.3 lets a proxy send it there alone).  None: flood it."""
        entry = self.neighbors.get(iface.group or "", target)
        if entry is None or entry.check_until or now - entry.last_seen > ANSWER_FRESH_S:
            return None
        member = self.topology.interfaces.get(entry.interface)
        if member is None or member is iface or member.group != iface.group:
            return None
        return member if member.enabled else None

    def _forward_unicast(
        self,
        iface: Interface,
        frame: bytes,
        dst: bytes,
        icmp_offset: int,
        now: float,
        actions: list[Action],
        segment_bytes: int,
        meta: object,
    ) -> None:
        group = iface.group
        assert group is not None
        entry = self.neighbors.get(group, dst)
        if entry is None:
            if dst == UNSPECIFIED:
                actions.append(Dropped(iface.name, DropReason.UNSPECIFIED_DESTINATION))
                return
            if self._on_link(group, dst) is not True:
                upstream = self.topology.groups[group].upstream
                if upstream is not None and upstream != iface.name:
                    entry = self.neighbors.best_router(group, upstream, now)
            if entry is None:
                self._hold(iface, frame, dst, icmp_offset, now, actions, meta)
                return
        egress_name = entry.interface
        if egress_name == iface.name:
            actions.append(Dropped(iface.name, DropReason.HAIRPIN))
            return
        egress = self.topology.interfaces.get(egress_name)
        if egress is None or not egress.enabled or egress.group != group:
            actions.append(Dropped(iface.name, DropReason.EGRESS_DISABLED))
            return
        packet_bytes = segment_bytes or len(frame) - ETH_HLEN
        if packet_bytes > egress.mtu:
            actions.append(Dropped(iface.name, DropReason.MTU_EXCEEDED))
            self._packet_too_big(iface, frame, egress.mtu, now, actions)
            return
        if icmp_offset < 0:
            actions.append(Transmit(egress_name, entry.mac + egress.mac + frame[_AFTER_MACS], meta))
        else:
            actions.append(
                Transmit(egress_name, rewrite_nd(frame, icmp_offset, egress.mac, entry.mac))
            )

    def _hold(
        self,
        iface: Interface,
        frame: bytes,
        dst: bytes,
        icmp_offset: int,
        now: float,
        actions: list[Action],
        meta: object,
    ) -> None:
        group = iface.group
        assert group is not None
        source = frame[SRC]
        pending, pushed_out = self.hold.hold(
            group, dst, source, HeldFrame(iface.name, frame, icmp_offset, meta), now
        )
        if pushed_out is not None:
            actions.append(Dropped(pushed_out.ingress, DropReason.HOLD_QUEUE_FULL))
        if pushed_out is None or pushed_out.frame is not frame:
            self.counters["held"] += 1
        if pending is not None:
            solicit, _ = self.hold.due(now)
            for due in solicit:
                self._solicit(due.group, due.address, due.source, due.ingress, now, actions)

    def _solicit(
        self,
        group: str,
        target: bytes,
        source: bytes,
        ingress: str,
        now: float,
        actions: list[Action],
    ) -> None:
        """Our own NS for `target`, out of every other member, speaking for `source`.

        It costs the member whose frame is held a token: a flood of frames to unknown
        destinations spends only its sender's share.
        """
        if not self.member_work.allow(ingress, now):
            self.counters["member_work_limited"] += 1
            return
        dst = solicited_node(target)
        dst_mac = multicast_mac(dst)
        for member in self.topology.forwarding_members(group):
            if member.name == ingress:
                continue
            options = (
                ()
                if source == UNSPECIFIED
                else (LinkLayerAddressOption(OptionType.SOURCE_LINK_LAYER, member.mac),)
            )
            icmp = encode_nd(NeighborSolicitation(target, options), source, dst)
            header = IPv6Header(source, dst, NH_ICMPV6, ND_HOP_LIMIT, len(icmp))
            actions.append(Transmit(member.name, build_frame(dst_mac, member.mac, header, icmp)))
            self.counters["solicits_sent"] += 1

    def _packet_too_big(
        self, iface: Interface, frame: bytes, mtu: int, now: float, actions: list[Action]
    ) -> None:
        """ICMPv6 Packet Too Big back to the sender (RFC 4443 §3.2, rate-limited)."""
        sender = frame[SRC]
        if sender == UNSPECIFIED or (
            frame[NEXT_HEADER_OFFSET] == NH_ICMPV6 and frame[_ICMP_TYPE_OFFSET] < 128
        ):
            return  # never answer an ICMPv6 error, nor a sender without an address
        self._ptb_tokens = min(
            self._ptb_burst, self._ptb_tokens + (now - self._ptb_refilled_at) * self._ptb_rate
        )
        self._ptb_refilled_at = now
        if self._ptb_tokens < 1.0:
            return
        source = _reply_source(iface.addresses, sender)
        if source is None:
            return
        self._ptb_tokens -= 1.0
        body = frame[L3_OFFSET : L3_OFFSET + _PTB_QUOTE_MAX]
        message = b"\x02\x00\x00\x00" + mtu.to_bytes(4, "big") + body
        checksum = upper_layer_checksum(source, sender, NH_ICMPV6, message)
        message = (
            message[:CHECKSUM_OFFSET] + checksum.to_bytes(2, "big") + message[CHECKSUM_OFFSET + 2 :]
        )
        header = IPv6Header(source, sender, NH_ICMPV6, 255, len(message))
        reply = build_frame(frame[SRC_MAC], iface.mac, header, message)
        actions.append(Transmit(iface.name, reply))
        self.counters["ptb_sent"] += 1

    def _answerable(self, iface: Interface, target: bytes, now: float) -> Neighbor | None:
        """The neighbor to answer for: fresh, and behind another enabled member."""
        entry = self.neighbors.get(iface.group or "", target)
        if entry is None or now - entry.last_seen > ANSWER_FRESH_S:
            return None
        return entry if answerable(self.topology, iface.name, entry) else None

    def _answer_for_neighbor(
        self, iface: Interface, frame: bytes, message: NeighborSolicitation, now: float
    ) -> Transmit | None:
        """Answer a valid multicast NS for a neighbor seen recently behind another member.

        Like a kernel proxy entry: the answer names the ingress's MAC, which is the answer
        the neighbor's own NA would bring back through us anyway, one round trip later.
        O is clear (RFC 4861 §7.2.8) so that it never overrides the owner's own NA; the
        NS is still forwarded, so the neighbor learns of the asker too.  DAD probes (from
        the unspecified address) are never answered: the owner must defend itself.
        """
        asker = frame[SRC]
        entry = self._answerable(iface, message.target, now)
        if asker == UNSPECIFIED or entry is None:
            return None
        if not self.member_work.allow(iface.name, now):
            self.counters["member_work_limited"] += 1
            return None
        asker_mac = _link_layer_option(message.options, OptionType.SOURCE_LINK_LAYER)
        return self._answer(iface, entry, asker, asker_mac or frame[SRC_MAC])

    def _answer(
        self, iface: Interface, entry: Neighbor, asker: bytes, asker_mac: bytes
    ) -> Transmit:
        self.counters["answered"] += 1
        frame = answer_frame(iface.mac, entry.address, entry.is_router, asker, asker_mac)
        return Transmit(iface.name, frame)

    # --- learning and ownership ------------------------------------------------------

    def _claim(
        self,
        group: str,
        address: bytes,
        ingress: str,
        mac: bytes,
        now: float,
        actions: list[Action],
        *,
        confirmed: bool = False,
        is_router: bool | None = None,
    ) -> DropReason | None:
        """Learn `address` for (`ingress`, `mac`) as far as ownership allows.

        Returns why the frame must be dropped (the claim is refused), or None.
        """
        verdict = judge(self.topology, self.neighbors, group, address, ingress, mac)
        if verdict is Verdict.CLAIM:
            self._report_claim(group, address, ingress, mac, now, actions)
            return DropReason.CLAIM_REFUSED
        if verdict is Verdict.OVER_QUOTA:
            return DropReason.OVER_QUOTA
        learned = self.neighbors.learn(
            group, address, ingress, mac, now, confirmed=confirmed, is_router=is_router
        )
        if learned is None and verdict is Verdict.OWNER:
            entry = self.neighbors.get(group, address)
            if entry is not None and entry.check_until:
                learned = entry  # the owner answers its check: the supervisor must hear it
        if learned is not None:
            self._on_learned(learned, now, actions)
        return None

    def _report_claim(
        self, group: str, address: bytes, ingress: str, mac: bytes, now: float, actions: list
    ) -> None:
        entry = self.neighbors.get(group, address)
        if entry is not None and entry.check_until > now:
            return  # a check of it runs already
        if not self.member_work.allow(ingress, now):
            self.counters["member_work_limited"] += 1
            return
        self.counters["claims_reported"] += 1
        actions.append(Claimed(group, address, ingress, mac))

    def probe(self, group: str, address: bytes) -> list[Action]:
        """The owner check: an NS for `address` to its owner's MAC, out of its member.

        From the member's own link-local address when it has one (the owner answers it
        in unicast); else a DAD-style probe from the unspecified address, which the owner
        defends with a multicast NA.  Either answer comes back to this member's worker.
        """
        entry = self.neighbors.get(group, address)
        member = self.topology.interfaces.get(entry.interface) if entry else None
        if entry is None or member is None or member.group != group or not member.enabled:
            return []
        source = next((a for a in sorted(member.addresses) if is_link_local(a)), UNSPECIFIED)
        if source == UNSPECIFIED:
            dst = solicited_node(address)
            options: tuple = ()
        else:
            dst = address
            options = (LinkLayerAddressOption(OptionType.SOURCE_LINK_LAYER, member.mac),)
        icmp = encode_nd(NeighborSolicitation(address, options), source, dst)
        header = IPv6Header(source, dst, NH_ICMPV6, ND_HOP_LIMIT, len(icmp))
        self.counters["probes_sent"] += 1
        return [Transmit(member.name, build_frame(entry.mac, member.mac, header, icmp))]

    def announce(self, group: str, address: bytes, is_router: bool) -> list[Action]:
        """The supervisor saw a guest address arrive or move: say so on the upstream."""
        found = self.topology.groups.get(group)
        upstream = self.topology.interfaces.get(found.upstream or "") if found else None
        if upstream is None or not upstream.enabled or len(upstream.mac) != 6:
            return []
        self.counters["announced"] += 1
        frame = announcement_frame(upstream.mac, address, is_router)
        return [Transmit(upstream.name, frame)]

    # --- learning ------------------------------------------------------------------

    def _on_learned(self, neighbor: Neighbor, now: float, actions: list[Action]) -> None:
        actions.append(Learned(neighbor.copy()))
        if self.hold.destinations:
            self._release(neighbor.group, neighbor.address, now, actions)

    def _release(self, group: str, address: bytes, now: float, actions: list[Action]) -> None:
        for held in self.hold.release(group, address):
            iface = self.topology.interfaces.get(held.ingress)
            if iface is None or not iface.enabled or iface.group != group:
                actions.append(Dropped(held.ingress, DropReason.INGRESS_DISABLED))
                continue
            self.counters["released"] += 1
            self._forward_unicast(
                iface, held.frame, address, held.icmp_offset, now, actions, 0, held.meta
            )

    def _learn_prefixes(
        self, group: str, message: RouterAdvertisement, now: float, actions: list[Action]
    ) -> None:
        prefixes = self.topology.groups[group].onlink_prefixes
        for option in message.options:
            if not isinstance(option, PrefixInformation) or not option.on_link:
                continue
            if option.prefix_length > 128:
                continue
            key = (option.prefix, option.prefix_length)
            if option.valid_lifetime_s == 0:
                if prefixes.pop(key, None) is not None:
                    actions.append(PrefixLearned(group, key[0], key[1], 0.0))
                continue
            until = (
                _FOREVER
                if option.valid_lifetime_s == _INFINITE_LIFETIME
                else now + option.valid_lifetime_s
            )
            previous = prefixes.get(key)
            prefixes[key] = until
            if previous is None or abs(previous - until) > 60.0:
                actions.append(PrefixLearned(group, key[0], key[1], until))

    def _learn_router_addresses(
        self,
        group: str,
        iface: Interface,
        frame: bytes,
        message: RouterAdvertisement,
        now: float,
        actions: list[Action],
    ) -> None:
        """A prefix option with the R flag names the router's own address (RFC 6275
        §7.2): it belongs to the router on the upstream, pinned like its source.  So do
        the on-link DNS servers of an RDNSS option (RFC 8106), most often the router
        itself, while nobody holds them yet: no guest can take them before they speak.
        If a server is another host on the upstream link, its first ND moves it there
        through an owner check the router does not answer."""
        router_mac = (
            _link_layer_option(message.options, OptionType.SOURCE_LINK_LAYER) or frame[SRC_MAC]
        )
        named: list[bytes] = []
        for option in message.options:
            if isinstance(option, PrefixInformation) and option.flags & _PI_FLAG_ROUTER_ADDRESS:
                named.append(option.prefix)
            elif isinstance(option, RecursiveDnsServers) and option.lifetime_s:
                named.extend(
                    server
                    for server in option.servers
                    if self.neighbors.get(group, server) is None and self._on_link(group, server)
                )
        for address in named:
            if address[0] != 0xFF and address != UNSPECIFIED:
                self._claim(group, address, iface.name, router_mac, now, actions, is_router=True)

    def _on_link(self, group: str, address: bytes) -> bool | None:
        """True on-link, False off-link, None when no RA has told us yet."""
        if is_link_local(address):
            return True
        prefixes = self.topology.groups[group].onlink_prefixes
        if not prefixes:
            return None
        return any(in_prefix(address, prefix, length) for prefix, length in prefixes)

    # --- replicated state and timers -------------------------------------------------

    def on_neighbor(self, neighbor: Neighbor, now: float) -> list[Action]:
        """A neighbor learned elsewhere (the supervisor's delta): store it, release holds."""
        self.neighbors.put(neighbor)
        return self.release_held(neighbor, now)

    def release_held(self, neighbor: Neighbor, now: float) -> list[Action]:
        """Frames held for a neighbor now in the cache (a replica stored it) go out."""
        actions: list[Action] = []
        if self.hold.destinations:
            self._release(neighbor.group, neighbor.address, now, actions)
        return actions

    def poll(self, now: float) -> list[Action]:
        actions: list[Action] = [LoopCleared(name) for name in self.topology.expire(now)]
        actions.extend(Expired(entry) for entry in self.neighbors.expire(now))
        solicit, expired = self.hold.due(now)
        for pending in solicit:
            self._solicit(
                pending.group, pending.address, pending.source, pending.ingress, now, actions
            )
        for pending in expired:
            for held in pending.frames:
                actions.append(Dropped(held.ingress, DropReason.HOLD_TIMEOUT))
        return actions

    def next_deadline(self) -> float | None:
        deadlines = [
            d
            for d in (
                self.topology.next_deadline(),
                self.neighbors.next_deadline(),
                self.hold.next_deadline(),
            )
            if d is not None
        ]
        return min(deadlines, default=None)


def _link_layer_option(options: tuple, kind: int) -> bytes | None:
    for option in options:
        if (
            isinstance(option, LinkLayerAddressOption)
            and option.type == kind
            and len(option.address) == 6
            and not option.address[0] & 1
        ):
            return option.address
    return None


def _reply_source(addresses: frozenset[bytes], destination: bytes) -> bytes | None:
    """An address of ours to answer `destination` from: same scope preferred."""
    wanted_link_local = is_link_local(destination)
    fallback = None
    for address in sorted(addresses):
        if is_link_local(address) == wanted_link_local:
            return address
        fallback = fallback or address
    return fallback
