"""The forwarding engine with an injected clock: every rule of engine.py's docstring."""

import pytest
from ndframes import (
    GUEST1,
    GUEST1_LL,
    GUEST1_MAC,
    GUEST2,
    GUEST2_MAC,
    GUEST3,
    GUEST3_MAC,
    OTHER_MAC,
    PREFIX,
    PROXY_UP_LL,
    PROXY_VM1_LL,
    REMOTE,
    ROUTER,
    ROUTER_LL,
    ROUTER_MAC,
    UP_MAC,
    VM1_MAC,
    VM2_MAC,
    lab_topology,
    nd_frame,
    udp_frame,
)

from portier.addresses import ALL_NODES, ALL_ROUTERS, multicast_mac, parse_ipv6, solicited_node
from portier.answers import AnswerTables, EarlyAnswers, build_answer_table
from portier.drops import DropReason
from portier.engine import (
    Dropped,
    Engine,
    Expired,
    Learned,
    LoopCleared,
    LoopDetected,
    PrefixLearned,
    Transmit,
)
from portier.frame import parse_packet
from portier.groups import DisableReason
from portier.holdqueue import HoldQueue
from portier.ndmsg import (
    LinkLayerAddressOption,
    NeighborAdvertisement,
    NeighborSolicitation,
    PrefixInformation,
    RouterAdvertisement,
    RouterSolicitation,
    parse_nd,
)
from portier.neighbors import NeighborCache
from portier.validation import validate_nd


def sent(actions) -> dict[str, bytes]:
    out = {}
    for action in actions:
        if isinstance(action, Transmit):
            assert action.interface not in out, "one frame per egress"
            out[action.interface] = action.frame
    return out


def sent_transmit(actions) -> Transmit:
    """The one Transmit back out of the ingress (an answer) among `actions`."""
    (answer,) = [a for a in actions if isinstance(a, Transmit) and a.interface == "up0"]
    return answer


def drops(actions) -> list[DropReason]:
    return [a.reason for a in actions if isinstance(a, Dropped)]


def learned(actions) -> set[bytes]:
    return {a.neighbor.address for a in actions if isinstance(a, Learned)}


@pytest.fixture
def engine() -> Engine:
    return Engine(lab_topology())


def router_ra(flags: int = 0, *, prefix: bool = True) -> bytes:
    options = [LinkLayerAddressOption(1, ROUTER_MAC)]
    if prefix:
        options.append(PrefixInformation(64, 0xC0, 86400, 14400, PREFIX))
    ra = RouterAdvertisement(64, flags, 1800, 0, 0, tuple(options))
    return nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, ra)


def learn_router_and_guests(engine: Engine, now: float = 1.0) -> None:
    engine.handle_frame("up0", router_ra(), now)
    engine.handle_frame("up0", udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1), now)
    engine.handle_frame("vm1", udp_frame(GUEST1_MAC, VM1_MAC, GUEST1, ROUTER), now)
    engine.handle_frame("vm2", udp_frame(GUEST2_MAC, VM2_MAC, GUEST2, ROUTER), now)


# --- multicast ----------------------------------------------------------------------


def test_multicast_data_fans_out_to_other_members_of_the_group(engine):
    group = parse_ipv6("ff02::fb")
    frame = udp_frame(GUEST1_MAC, multicast_mac(group), GUEST1_LL, group)
    out = sent(engine.handle_frame("vm1", frame, 1.0))
    assert set(out) == {"up0", "vm2"}  # not the ingress, not the other group
    for name, mac in (("up0", UP_MAC), ("vm2", VM2_MAC)):
        assert out[name][:6] == multicast_mac(group)
        assert out[name][6:12] == mac
        assert out[name][12:] == frame[12:]  # hop limit and payload untouched


def test_multicast_ns_is_rewritten_for_each_egress(engine):
    target = solicited_node(ROUTER)
    ns = NeighborSolicitation(ROUTER, (LinkLayerAddressOption(1, GUEST1_MAC),))
    actions = engine.handle_frame("vm1", nd_frame(GUEST1_MAC, None, GUEST1, target, ns), 1.0)
    out = sent(actions)
    assert set(out) == {"up0", "vm2"}
    for name, mac in (("up0", UP_MAC), ("vm2", VM2_MAC)):
        packet = parse_packet(out[name])
        message = validate_nd(packet.ipv6.hop_limit, packet.ipv6.src, packet.ipv6.dst, packet.upper)
        assert message.options == (LinkLayerAddressOption(1, mac),)
        assert packet.src_mac == mac and packet.ipv6.hop_limit == 255
    assert learned(actions) == {GUEST1}


def test_router_solicitation_slla_is_rewritten(engine):
    rs = RouterSolicitation((LinkLayerAddressOption(1, GUEST1_MAC),))
    out = sent(
        engine.handle_frame("vm1", nd_frame(GUEST1_MAC, None, GUEST1_LL, ALL_ROUTERS, rs), 1.0)
    )
    assert parse_nd(parse_packet(out["up0"]).upper).options == (LinkLayerAddressOption(1, UP_MAC),)


def test_ra_from_upstream_gets_the_proxy_flag_and_teaches_router_and_prefix(engine):
    actions = engine.handle_frame("up0", router_ra(flags=0x80), 1.0)
    out = sent(actions)
    assert set(out) == {"vm1", "vm2"}
    ra = parse_nd(parse_packet(out["vm1"]).upper)
    assert ra.flags == 0x84
    assert ra.options[0] == LinkLayerAddressOption(1, VM1_MAC)
    assert PrefixLearned("lan", PREFIX, 64, 86401.0) in actions
    router = engine.neighbors.get("lan", ROUTER_LL)
    assert router.is_router and router.interface == "up0" and router.mac == ROUTER_MAC


def test_dad_probe_is_forwarded_and_teaches_nothing(engine):
    target = solicited_node(GUEST2)
    ns = NeighborSolicitation(GUEST2)
    frame = nd_frame(GUEST1_MAC, None, bytes(16), target, ns)
    actions = engine.handle_frame("vm1", frame, 1.0)
    assert set(sent(actions)) == {"up0", "vm2"}
    assert learned(actions) == set()


def test_defending_na_reaches_the_prober(engine):
    na = NeighborAdvertisement(GUEST2, 0x20, (LinkLayerAddressOption(2, GUEST2_MAC),))
    actions = engine.handle_frame("vm2", nd_frame(GUEST2_MAC, None, GUEST2, ALL_NODES, na), 1.0)
    out = sent(actions)
    assert set(out) == {"up0", "vm1"}
    assert parse_nd(parse_packet(out["vm1"]).upper).options == (LinkLayerAddressOption(2, VM1_MAC),)
    assert engine.neighbors.get("lan", GUEST2).interface == "vm2"


# --- unicast --------------------------------------------------------------------------


def test_unicast_goes_where_the_cache_says_with_hop_limit_kept(engine):
    learn_router_and_guests(engine)
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST2, hop_limit=7)
    out = sent(engine.handle_frame("up0", frame, 2.0))
    assert set(out) == {"vm2"}
    assert out["vm2"] == GUEST2_MAC + VM2_MAC + frame[12:]
    assert parse_packet(out["vm2"]).ipv6.hop_limit == 7


def test_never_back_out_of_the_ingress(engine):
    learn_router_and_guests(engine)
    frame = udp_frame(ROUTER_MAC, UP_MAC, parse_ipv6("2001:db8:1::2"), ROUTER)
    assert drops(engine.handle_frame("up0", frame, 2.0)) == [DropReason.HAIRPIN]


def test_unicast_na_is_rewritten_and_confirms_the_neighbor(engine):
    learn_router_and_guests(engine)
    na = NeighborAdvertisement(ROUTER, 0xE0, (LinkLayerAddressOption(2, ROUTER_MAC),))
    actions = engine.handle_frame("up0", nd_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1, na), 2.0)
    out = sent(actions)
    assert set(out) == {"vm1"}
    packet = parse_packet(out["vm1"])
    assert packet.dst_mac == GUEST1_MAC and packet.src_mac == VM1_MAC
    assert parse_nd(packet.upper).options == (LinkLayerAddressOption(2, VM1_MAC),)
    entry = engine.neighbors.get("lan", ROUTER)
    assert entry.is_router and entry.state(2.5).value == "reachable"


def test_frames_to_the_ingress_own_address_are_left_to_the_kernel(engine):
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER_LL, PROXY_UP_LL)
    actions = engine.handle_frame("up0", frame, 1.0)
    assert sent(actions) == {}
    assert drops(actions) == [DropReason.LOCAL_DESTINATION]
    assert learned(actions) == {ROUTER_LL}  # still learned from


def test_unicast_for_another_mac_is_not_ours(engine):
    frame = udp_frame(ROUTER_MAC, GUEST1_MAC, ROUTER, GUEST1)
    assert drops(engine.handle_frame("up0", frame, 1.0)) == [DropReason.NOT_FOR_US]


def test_our_own_frames_coming_back_are_dropped(engine):
    frame = udp_frame(VM2_MAC, UP_MAC, GUEST1, ROUTER)
    assert drops(engine.handle_frame("up0", frame, 1.0)) == [DropReason.OWN_FRAME]


def test_off_link_destination_goes_to_the_upstream_router(engine):
    learn_router_and_guests(engine)
    frame = udp_frame(GUEST1_MAC, VM1_MAC, GUEST1, REMOTE)
    out = sent(engine.handle_frame("vm1", frame, 2.0))
    assert out == {"up0": ROUTER_MAC + UP_MAC + frame[12:]}


def test_ethernet_padding_is_removed(engine):
    learn_router_and_guests(engine)
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1, size=2)
    padded = frame + bytes(60 - len(frame)) if len(frame) < 60 else frame + bytes(4)
    out = sent(engine.handle_frame("up0", padded, 2.0))
    assert out["vm1"][12:] == frame[12:]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f[:40], DropReason.FRAME_TOO_SHORT),
        (lambda f: f[:12] + b"\x08\x00" + f[14:], DropReason.NOT_IPV6),
        (lambda f: f[:14] + b"\x40" + f[15:], DropReason.BAD_IP_VERSION),
        (lambda f: f[:-1], DropReason.TRUNCATED),
        (lambda f: f[:22] + b"\xff" + f[23:], DropReason.MULTICAST_SOURCE),
    ],
)
def test_malformed_frames_have_named_reasons(engine, mutate, reason):
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1)
    assert drops(engine.handle_frame("up0", mutate(frame), 1.0)) == [reason]


def test_invalid_nd_is_dropped_with_its_reason(engine):
    ns = NeighborSolicitation(ROUTER, (LinkLayerAddressOption(1, GUEST1_MAC),))
    frame = bytearray(nd_frame(GUEST1_MAC, None, GUEST1, solicited_node(ROUTER), ns))
    frame[56] ^= 0xFF  # checksum
    assert drops(engine.handle_frame("vm1", bytes(frame), 1.0)) == [DropReason.BAD_CHECKSUM]
    frame = nd_frame(GUEST1_MAC, None, GUEST1, solicited_node(ROUTER), ns, hop_limit=64)
    assert drops(engine.handle_frame("vm1", frame, 1.0)) == [DropReason.HOP_LIMIT_NOT_255]
    assert engine.neighbors.get("lan", GUEST1) is None  # nothing learned from invalid ND


# --- hold queue -------------------------------------------------------------------------


def test_unknown_destination_is_held_solicited_and_released(engine):
    engine.handle_frame("up0", router_ra(), 1.0)  # prefix known: GUEST1 is on-link
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1)
    actions = engine.handle_frame("up0", frame, 2.0)
    out = sent(actions)
    assert set(out) == {"vm1", "vm2"}  # our NS, out of every other member
    for name, mac in (("vm1", VM1_MAC), ("vm2", VM2_MAC)):
        packet = parse_packet(out[name])
        ns = validate_nd(255, packet.ipv6.src, packet.ipv6.dst, packet.upper)
        assert ns.target == GUEST1
        assert packet.ipv6.src == ROUTER  # spoken for the held packet's sender
        assert packet.ipv6.dst == solicited_node(GUEST1)
        assert ns.options == (LinkLayerAddressOption(1, mac),)
    assert engine.counters["held"] == 1
    na = NeighborAdvertisement(GUEST1, 0x60, (LinkLayerAddressOption(2, GUEST1_MAC),))
    actions = engine.handle_frame("vm1", nd_frame(GUEST1_MAC, VM1_MAC, GUEST1, ROUTER, na), 2.1)
    out = sent(actions)
    assert out["vm1"] == GUEST1_MAC + VM1_MAC + frame[12:]  # the held frame, released
    assert parse_nd(parse_packet(out["up0"]).upper).target == GUEST1  # and the NA itself
    assert engine.counters["released"] == 1


def test_replicated_neighbor_releases_held_frames(engine):
    other = Engine(lab_topology())
    engine.handle_frame("up0", router_ra(), 1.0)
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST2)
    engine.handle_frame("up0", frame, 2.0)
    learned_elsewhere = [
        a.neighbor
        for a in other.handle_frame("vm2", udp_frame(GUEST2_MAC, VM2_MAC, GUEST2, ROUTER), 2.05)
        if isinstance(a, Learned)
    ]
    assert sent(engine.on_neighbor(learned_elsewhere[0], 2.1)) == {
        "vm2": GUEST2_MAC + VM2_MAC + frame[12:]
    }


def test_hold_times_out_after_three_solicitations(engine):
    engine.handle_frame("up0", router_ra(), 1.0)
    engine.handle_frame("up0", udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1), 10.0)
    assert engine.next_deadline() == 11.0
    assert set(sent(engine.poll(11.0))) == {"vm1", "vm2"}  # second solicitation
    assert set(sent(engine.poll(12.0))) == {"vm1", "vm2"}  # third
    assert engine.poll(12.5) == []
    actions = engine.poll(13.0)
    assert actions == [Dropped("up0", DropReason.HOLD_TIMEOUT)]
    assert engine.hold.destinations == 0


def test_hold_queue_is_bounded():
    engine = Engine(lab_topology(), hold=HoldQueue(max_destinations=2, per_destination=2))
    engine.handle_frame("up0", router_ra(), 1.0)
    frames = [udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1, size=10 + i) for i in range(3)]
    assert drops(engine.handle_frame("up0", frames[0], 2.0)) == []
    assert drops(engine.handle_frame("up0", frames[1], 2.0)) == []
    assert drops(engine.handle_frame("up0", frames[2], 2.0)) == [DropReason.HOLD_QUEUE_FULL]
    engine.handle_frame("up0", udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST2), 2.0)
    third = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, parse_ipv6("2001:db8:1::999"))
    assert drops(engine.handle_frame("up0", third, 2.0)) == [DropReason.HOLD_QUEUE_FULL]
    na = NeighborAdvertisement(GUEST1, 0x60, (LinkLayerAddressOption(2, GUEST1_MAC),))
    out = [
        a.frame
        for a in engine.handle_frame("vm1", nd_frame(GUEST1_MAC, VM1_MAC, GUEST1, ROUTER, na), 2.1)
        if isinstance(a, Transmit) and a.interface == "vm1"
    ]
    assert [f[12:] for f in out] == [frames[1][12:], frames[2][12:]]  # oldest pushed out


# --- loops ------------------------------------------------------------------------------


def test_ra_on_a_downstream_member_is_a_loop_until_it_expires():
    engine = Engine(lab_topology(loop_disable_s=3600))
    ra = RouterAdvertisement(64, 0, 1800, 0, 0, (LinkLayerAddressOption(1, GUEST1_MAC),))
    actions = engine.handle_frame("vm1", nd_frame(GUEST1_MAC, None, GUEST1_LL, ALL_NODES, ra), 10.0)
    assert actions == [LoopDetected("vm1", "lan", 3610.0), Dropped("vm1", DropReason.LOOP_DETECTED)]
    vm1 = engine.topology.interfaces["vm1"]
    assert vm1.disable_reasons == {DisableReason.LOOP_DETECTED}
    frame = udp_frame(GUEST1_MAC, VM1_MAC, GUEST1, ROUTER)
    assert drops(engine.handle_frame("vm1", frame, 11.0)) == [DropReason.INGRESS_DISABLED]
    group = parse_ipv6("ff02::fb")
    fan = sent(
        engine.handle_frame(
            "up0", udp_frame(ROUTER_MAC, multicast_mac(group), ROUTER_LL, group), 11.0
        )
    )
    assert set(fan) == {"vm2"}  # the disabled member is skipped
    assert engine.topology.next_deadline() == 3610.0
    assert LoopCleared("vm1") in engine.poll(3610.0)
    assert vm1.enabled


def test_proxied_ra_on_the_upstream_is_a_loop_outside_nested_mode():
    engine = Engine(lab_topology(nested=False))
    actions = engine.handle_frame("up0", router_ra(flags=0x04), 1.0)
    assert isinstance(actions[0], LoopDetected) and sent(actions) == {}
    nested = Engine(lab_topology(nested=True))
    out = sent(nested.handle_frame("up0", router_ra(flags=0x04), 1.0))
    assert set(out) == {"vm1", "vm2"}
    assert parse_nd(parse_packet(out["vm1"]).upper).flags == 0x04


def test_group_without_upstream_proxies_ras_instead_of_disabling():
    topology = lab_topology()
    topology.unset_upstream("lan")
    engine = Engine(topology)
    ra = RouterAdvertisement(64, 0, 0, 0, 0, ())
    out = sent(
        engine.handle_frame("vm1", nd_frame(GUEST1_MAC, None, GUEST1_LL, ALL_NODES, ra), 1.0)
    )
    assert set(out) == {"up0", "vm2"}
    assert engine.topology.interfaces["vm1"].enabled


# --- groups and disabled members ----------------------------------------------------------


def test_groups_are_isolated(engine):
    learn_router_and_guests(engine)
    group = parse_ipv6("ff02::fb")
    out = sent(
        engine.handle_frame("vm3", udp_frame(GUEST3_MAC, multicast_mac(group), GUEST3, group), 2.0)
    )
    assert out == {}
    frame = udp_frame(GUEST3_MAC, OTHER_MAC, GUEST3, GUEST1)
    actions = engine.handle_frame("vm3", frame, 2.0)
    assert not any(isinstance(a, Transmit) and a.interface != "vm3" for a in actions)
    assert engine.neighbors.get("other", GUEST1) is None
    assert engine.neighbors.get("lan", GUEST3) is None


def test_unicast_to_a_disabled_member_is_dropped(engine):
    learn_router_and_guests(engine)
    engine.topology.set_reason("vm1", DisableReason.LINK_DOWN, True)
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1)
    assert drops(engine.handle_frame("up0", frame, 2.0)) == [DropReason.EGRESS_DISABLED]


def test_unbound_and_groupless_ingress(engine):
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1)
    assert drops(engine.handle_frame("eth9", frame, 1.0)) == [DropReason.UNKNOWN_INTERFACE]
    engine.topology.remove_from_group("vm2")
    assert drops(engine.handle_frame("vm2", frame, 1.0)) == [DropReason.INGRESS_DISABLED]


# --- MTU ----------------------------------------------------------------------------------


def test_too_big_for_the_egress_gets_packet_too_big(engine):
    learn_router_and_guests(engine)
    engine.topology.update_link("vm1", mtu=1280)
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1, size=1400)
    actions = engine.handle_frame("up0", frame, 2.0)
    assert drops(actions) == [DropReason.MTU_EXCEEDED]
    ptb = parse_packet(sent(actions)["up0"])
    assert ptb.dst_mac == ROUTER_MAC and ptb.src_mac == UP_MAC
    assert ptb.ipv6.dst == ROUTER and ptb.ipv6.src == PROXY_UP_LL
    assert ptb.upper[:2] == b"\x02\x00" and int.from_bytes(ptb.upper[4:8], "big") == 1280
    assert len(ptb.data) - 14 <= 1280
    assert ptb.upper[8:48] == frame[14:54]  # quotes the offending packet
    # A GSO super-frame whose segments fit is forwarded whole, for the kernel to segment.
    out = sent(engine.handle_frame("up0", frame, 2.0, segment_bytes=1200))
    assert set(out) == {"vm1"}


def test_packet_too_big_is_rate_limited():
    engine = Engine(lab_topology(), ptb_rate_per_s=1.0, ptb_burst=2)
    learn_router_and_guests(engine)
    engine.topology.update_link("vm1", mtu=1280)
    frame = udp_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1, size=1400)
    counts = [len(sent(engine.handle_frame("up0", frame, 2.0))) for _ in range(5)]
    assert counts == [1, 1, 0, 0, 0]
    assert len(sent(engine.handle_frame("up0", frame, 3.0))) == 1


# --- timers -------------------------------------------------------------------------------


def test_neighbors_expire_through_poll():
    engine = Engine(lab_topology(), NeighborCache(lifetime_s=60))
    engine.handle_frame("vm1", udp_frame(GUEST1_MAC, VM1_MAC, GUEST1, ROUTER_LL), 0.0)
    assert engine.next_deadline() <= 60.0
    expired = [a.neighbor.address for a in engine.poll(60.0) if isinstance(a, Expired)]
    assert GUEST1 in expired
    assert engine.neighbors.get("lan", GUEST1) is None


def test_prefix_withdrawal_and_off_link_learning(engine):
    engine.handle_frame("up0", router_ra(), 1.0)
    # A source outside the on-link prefix is not learned as a neighbor.
    actions = engine.handle_frame("up0", udp_frame(ROUTER_MAC, UP_MAC, REMOTE, GUEST1), 2.0)
    assert REMOTE not in learned(actions)
    withdraw = RouterAdvertisement(64, 0, 1800, 0, 0, (PrefixInformation(64, 0xC0, 0, 0, PREFIX),))
    actions = engine.handle_frame(
        "up0", nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, withdraw), 3.0
    )
    assert PrefixLearned("lan", PREFIX, 64, 0.0) in actions
    assert engine.topology.groups["lan"].onlink_prefixes == {}


def test_proxy_vm1_address_used_for_nothing_else(engine):
    # The vm1 member's own address is local only on vm1.
    frame = udp_frame(GUEST1_MAC, VM1_MAC, GUEST1, PROXY_VM1_LL)
    assert drops(engine.handle_frame("vm1", frame, 1.0)) == [DropReason.LOCAL_DESTINATION]


def test_jumbogram_super_frame_is_forwarded_whole(engine):
    """BIG TCP hands over frames with payload length 0 behind a hop-by-hop jumbo option."""
    learn_router_and_guests(engine)
    hop_by_hop = bytes([6, 0, 0xC2, 4]) + (70000).to_bytes(4, "big")  # next header TCP
    body = hop_by_hop + bytes(70000 - 8)
    frame = udp_frame(GUEST1_MAC, VM1_MAC, GUEST1, ROUTER, size=0)
    frame = frame[:18] + b"\x00\x00\x00" + frame[21:54] + body
    out = sent(engine.handle_frame("vm1", frame, 2.0, segment_bytes=1440))
    assert out == {"up0": ROUTER_MAC + UP_MAC + frame[12:]}


def router_asks_for_guest1() -> bytes:
    """The router's multicast NS for GUEST1, with its MAC in the SLLA option."""
    ns = NeighborSolicitation(GUEST1, (LinkLayerAddressOption(1, ROUTER_MAC),))
    return nd_frame(ROUTER_MAC, None, ROUTER, solicited_node(GUEST1), ns)


def test_multicast_ns_for_a_fresh_neighbor_is_answered_at_once(engine):
    learn_router_and_guests(engine, now=1.0)
    actions = engine.handle_frame("up0", router_asks_for_guest1(), 2.0)
    out = sent(actions)
    assert set(out) == {"up0", "vm1"}  # the answer, and the NS still forwarded to its member
    answer = parse_packet(out["up0"])
    assert answer.dst_mac == ROUTER_MAC and answer.src_mac == UP_MAC
    assert (answer.ipv6.src, answer.ipv6.dst, answer.ipv6.hop_limit) == (GUEST1, ROUTER, 255)
    na = validate_nd(255, answer.ipv6.src, answer.ipv6.dst, answer.upper)
    assert na.target == GUEST1 and na.solicited and not na.override and not na.router
    assert na.options == (LinkLayerAddressOption(2, UP_MAC),)
    assert engine.counters["answered"] == 1


def early_answer(
    engine: Engine, frame: bytes, now: float, ingress: str = "up0", early=None
) -> Transmit | None:
    """What the worker's answer thread sends, from a table of the engine's state."""
    early = early if early is not None else EarlyAnswers()
    early.publish(build_answer_table(engine.topology, engine.neighbors, ingress))
    answer = early.answer(frame, now)
    return None if answer is None else Transmit(ingress, answer)


def test_the_early_answer_is_the_answer_handle_frame_gives(engine):
    """The worker answers before relaying; the relay then forwards without answering again."""
    learn_router_and_guests(engine, now=1.0)
    frame = router_asks_for_guest1()
    twin = Engine(lab_topology())
    learn_router_and_guests(twin, now=1.0)
    early = EarlyAnswers()
    answer = early_answer(engine, frame, 2.0, early=early)
    assert answer is not None and answer == sent_transmit(twin.handle_frame("up0", frame, 2.0))
    out = sent(engine.handle_frame("up0", frame, 2.0, answered=True))
    assert set(out) == {"vm1"}  # forwarded (to the target's member), not answered twice
    assert engine.counters["answered"] == 0 and early.counters["answered"] == 1
    # A new MAC on the ingress makes a new answer, never a remembered one.
    new_mac = bytes.fromhex("020000000099")
    engine.topology.update_link("up0", mac=new_mac)
    again = early_answer(engine, frame, 3.0, early=early)
    assert again is not None and parse_packet(again.frame).src_mac == new_mac


def test_a_remembered_answer_still_follows_the_state(engine):
    learn_router_and_guests(engine, now=1.0)
    frame = router_asks_for_guest1()
    early = EarlyAnswers()
    first = early_answer(engine, frame, 2.0, early=early)
    second = early_answer(engine, frame, 2.5, early=early)
    assert first is not None and second is not None and second.frame is first.frame
    engine.neighbors.learn("lan", GUEST1, "vm1", GUEST1_MAC, 3.0, is_router=True)
    flagged = early_answer(engine, frame, 3.0, early=early)
    assert flagged is not None
    answer = parse_packet(flagged.frame)
    assert validate_nd(255, answer.ipv6.src, answer.ipv6.dst, answer.upper).router
    assert early_answer(engine, frame, 3.0 + 301, early=early) is None  # no longer fresh
    engine.topology.detect_loop("vm1", 4.0)
    assert early_answer(engine, frame, 4.0, early=early) is None  # its member is disabled
    assert early.counters["answered"] == 3


def test_early_answers_are_rate_limited_per_member(engine):
    """Fair sharing: the answer thread spends its member's tokens, burst then rate; what
    it holds back is counted and left to the main loop (the engine's own bucket)."""
    learn_router_and_guests(engine, now=1.0)
    frame = router_asks_for_guest1()
    early = EarlyAnswers(rate_per_s=10.0, burst=3)
    sent_at_once = [early_answer(engine, frame, 2.0, early=early) for _ in range(5)]
    assert [answer is not None for answer in sent_at_once] == [True] * 3 + [False] * 2
    assert early.counters == {"answered": 3, "answers_limited": 2}
    assert early_answer(engine, frame, 2.1, early=early) is not None  # one token back
    assert early_answer(engine, frame, 2.1, early=early) is None
    out = engine.handle_frame("up0", frame, 2.1)
    assert sent_transmit(out) is not None  # the engine still answers from its own bucket


def test_the_early_answer_leaves_what_it_does_not_answer_to_handle_frame(engine):
    learn_router_and_guests(engine, now=1.0)
    frame = router_asks_for_guest1()
    broken = frame[:-1] + bytes([frame[-1] ^ 1])  # checksum no longer matches
    assert early_answer(engine, broken, 2.0) is None
    assert drops(engine.handle_frame("up0", broken, 2.0)) == [DropReason.BAD_CHECKSUM]
    ns = NeighborSolicitation(GUEST1, (LinkLayerAddressOption(1, ROUTER_MAC),))
    unicast = nd_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST1, ns)
    assert early_answer(engine, unicast, 2.0) is None  # NUD: the owner answers
    assert early_answer(engine, frame, 2.0, ingress="vm1") is None  # target behind the ingress
    assert engine.counters["answered"] == 0


def test_while_the_kernel_answers_its_ns_shape_the_worker_does_not(engine):
    """The BPF path answers the NS with only an SLLA option; the rest is still ours."""
    learn_router_and_guests(engine, now=1.0)
    engine.topology.kernel_answers = True
    frame = router_asks_for_guest1()
    assert early_answer(engine, frame, 2.0) is None
    assert set(sent(engine.handle_frame("up0", frame, 2.0))) == {"vm1"}  # forwarded
    assert engine.counters["answered"] == 0
    # An NS with a nonce option (RFC 3971 style) is not the kernel's shape: answered here.
    nonce = LinkLayerAddressOption(14, bytes(6))
    ns = NeighborSolicitation(GUEST1, (LinkLayerAddressOption(1, ROUTER_MAC), nonce))
    other = nd_frame(ROUTER_MAC, None, ROUTER, solicited_node(GUEST1), ns)
    assert early_answer(engine, other, 2.0) is not None
    engine.topology.kernel_answers = False
    assert early_answer(engine, frame, 2.0) is not None


def test_a_stale_replica_answers_nothing(engine):
    learn_router_and_guests(engine, now=1.0)
    early = EarlyAnswers()
    assert early_answer(engine, router_asks_for_guest1(), 2.0, early=early) is not None
    early.publish(None)  # what the worker publishes when its replica goes stale
    assert early.answer(router_asks_for_guest1(), 2.0) is None


def test_answer_tables_follow_neighbor_changes_one_by_one(engine):
    learn_router_and_guests(engine, now=1.0)
    tables = AnswerTables("up0")
    table = tables.publish(engine.topology, engine.neighbors)
    assert set(table.targets) == {GUEST1, GUEST2}  # not the router: it is behind up0
    assert tables.publish(engine.topology, engine.neighbors) is table  # nothing changed
    moved = engine.neighbors.learn("lan", GUEST1, "up0", GUEST1_MAC, 2.0)
    tables.neighbor_changed(engine.topology, moved)
    engine.neighbors.remove("lan", GUEST2)
    tables.neighbor_removed("lan", GUEST2)
    after = tables.publish(engine.topology, engine.neighbors)
    assert after is not table and not after.targets
    assert set(table.targets) == {GUEST1, GUEST2}  # what was published never changes
    with pytest.raises(TypeError):
        table.targets[GUEST3] = table.targets[GUEST1]  # type: ignore[index]
    assert after == build_answer_table(engine.topology, engine.neighbors, "up0")


def test_ns_is_not_answered_for_stale_unknown_or_same_side_targets(engine):
    learn_router_and_guests(engine, now=1.0)
    frame = router_asks_for_guest1()
    assert "up0" not in sent(engine.handle_frame("up0", frame, 400.0))  # not seen for 399 s
    dad = nd_frame(
        ROUTER_MAC, None, bytes(16), solicited_node(GUEST1), NeighborSolicitation(GUEST1)
    )
    assert "up0" not in sent(engine.handle_frame("up0", dad, 400.5))  # DAD is never answered
    # A target on the asker's own segment answers for itself.
    neighbor_on_vm1 = parse_ipv6("2001:db8:1::199")
    engine.handle_frame("vm1", udp_frame(GUEST3_MAC, VM1_MAC, neighbor_on_vm1, ROUTER), 401.0)
    same_side = NeighborSolicitation(neighbor_on_vm1, (LinkLayerAddressOption(1, GUEST1_MAC),))
    frame = nd_frame(GUEST1_MAC, None, GUEST1, solicited_node(neighbor_on_vm1), same_side)
    assert "vm1" not in sent(engine.handle_frame("vm1", frame, 401.1))
    assert engine.counters["answered"] == 0


def test_dad_probes_for_a_fresh_neighbor_are_forwarded_never_answered(engine):
    """The owner must defend its address itself: neither path answers a DAD probe."""
    learn_router_and_guests(engine, now=1.0)
    dad = nd_frame(
        ROUTER_MAC, None, bytes(16), solicited_node(GUEST1), NeighborSolicitation(GUEST1)
    )
    # The same NS from an address is answered at once: the target is fresh.
    asked = router_asks_for_guest1()
    assert early_answer(engine, asked, 2.0) is not None
    assert "up0" in sent(Engine(engine.topology, engine.neighbors).handle_frame("up0", asked, 2.0))
    assert early_answer(engine, dad, 2.0) is None
    out = sent(engine.handle_frame("up0", dad, 2.0))
    assert set(out) == {"vm1"}  # forwarded to the owner's member alone, not answered


def test_a_multicast_ns_for_a_placed_target_goes_to_its_member_alone(engine):
    """RFC 4389 §4.1.3: no flood for a target the cache places; a flood otherwise."""
    learn_router_and_guests(engine, now=1.0)
    asked = router_asks_for_guest1()
    assert set(sent(engine.handle_frame("up0", asked, 2.0))) == {"up0", "vm1"}
    # Not seen lately: whatever the cache says may be old news, so everyone hears it.
    assert set(sent(engine.handle_frame("up0", asked, 1.0 + 301))) == {"vm1", "vm2"}
    # Under an owner check: whose it is is open.
    learn_router_and_guests(engine, now=400.0)
    engine.neighbors.get("lan", GUEST1).check_until = 401.0
    assert set(sent(engine.handle_frame("up0", asked, 400.5))) == {"vm1", "vm2"}
    engine.neighbors.get("lan", GUEST1).check_until = 0.0
    # Its member disabled: flooded to the members that forward.
    engine.topology.detect_loop("vm1", 400.6)
    assert set(sent(engine.handle_frame("up0", asked, 400.7))) == {"vm2"}


def test_an_announcement_is_an_unsolicited_override_na_naming_the_upstream(engine):
    (announcement,) = engine.announce("lan", GUEST1, False)
    assert announcement.interface == "up0"
    packet = parse_packet(announcement.frame)
    assert (packet.dst_mac, packet.src_mac) == (multicast_mac(ALL_NODES), UP_MAC)
    assert (packet.ipv6.src, packet.ipv6.dst, packet.ipv6.hop_limit) == (GUEST1, ALL_NODES, 255)
    na = validate_nd(255, packet.ipv6.src, packet.ipv6.dst, packet.upper)  # checksum included
    assert na.target == GUEST1 and na.override and not na.solicited and not na.router
    assert na.options == (LinkLayerAddressOption(2, UP_MAC),)
    assert engine.announce("lan", ROUTER, True)[0].frame != announcement.frame
    assert engine.announce("nowhere", GUEST1, False) == []
    assert engine.counters["announced"] == 2
