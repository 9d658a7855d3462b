"""Address ownership with an injected clock: every row of ownership.py's state machine.

The worker's side (the engine judging claims against its replica) and the supervisor's
(OwnerChecks starting, answering and timing out checks) are driven together here, the
way the worker reports reach the supervisor: a Claimed action becomes claim(), the
probe() frame goes out, a Learned action from the owner becomes owner_seen().
"""

import pytest
from ndframes import (
    GUEST1,
    GUEST1_MAC,
    GUEST2,
    GUEST2_MAC,
    PROXY_VM1_LL,
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

from portier.addresses import ALL_NODES, ALL_ROUTERS, parse_ipv6, solicited_node
from portier.drops import DropReason
from portier.engine import Claimed, Dropped, Engine, Learned, Transmit
from portier.fairshare import TokenBuckets
from portier.frame import parse_packet
from portier.ndmsg import (
    NA_FLAG_OVERRIDE,
    NA_FLAG_SOLICITED,
    LinkLayerAddressOption,
    NeighborAdvertisement,
    NeighborSolicitation,
    OptionType,
    PrefixInformation,
    RecursiveDnsServers,
    RouterAdvertisement,
    parse_nd,
)
from portier.neighbors import NeighborCache, OwnerState
from portier.ownership import ClaimOutcome, OwnerChecks, Probe, Settled, Verdict, judge


def unsolicited_na(mac: bytes, target: bytes, *, override: bool = True) -> bytes:
    tlla = LinkLayerAddressOption(OptionType.TARGET_LINK_LAYER, mac)
    message = NeighborAdvertisement(target, NA_FLAG_OVERRIDE if override else 0, (tlla,))
    return nd_frame(mac, None, target, ALL_NODES, message)


def dad(mac: bytes, target: bytes) -> bytes:
    dst = solicited_node(target)
    return nd_frame(mac, None, parse_ipv6("::"), dst, NeighborSolicitation(target))


def drops(actions) -> list[DropReason]:
    return [a.reason for a in actions if isinstance(a, Dropped)]


def claims(actions) -> list[Claimed]:
    return [a for a in actions if isinstance(a, Claimed)]


@pytest.fixture
def engine() -> Engine:
    return Engine(lab_topology(), NeighborCache(per_member_limit=4))


@pytest.fixture
def checks(engine) -> OwnerChecks:
    # The supervisor's cache and the worker's replica are one object here: the
    # replication itself is tested in test_worker_replica.py.
    return OwnerChecks(engine.topology, engine.neighbors, probe_s=1.0)


def claim_from(checks: OwnerChecks, actions, now: float) -> Probe | Settled | None:
    (claim,) = claims(actions)
    return checks.claim(claim.group, claim.address, claim.interface, claim.mac, now)


def test_a_free_address_goes_to_its_first_claimant(engine):
    actions = engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    entry = engine.neighbors.get("lan", GUEST1)
    assert entry is not None and entry.owned_by("vm1", GUEST1_MAC)
    assert entry.owner_state() is OwnerState.OWNED
    assert any(isinstance(a, Learned) for a in actions)
    assert not drops(actions)


def test_another_members_claim_does_not_move_the_entry_and_starts_a_check(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.0)
    assert drops(actions) == [DropReason.CLAIM_REFUSED]
    assert not [a for a in actions if isinstance(a, Transmit)], "the spoofed NA is not relayed"
    assert engine.neighbors.get("lan", GUEST1).owned_by("vm1", GUEST1_MAC)
    probe = claim_from(checks, actions, 2.0)
    assert probe == Probe("lan", GUEST1, "vm1", GUEST1_MAC)
    entry = engine.neighbors.get("lan", GUEST1)
    assert entry.owner_state() is OwnerState.CHECKING
    assert (entry.claimant, entry.claimant_mac, entry.check_until) == ("vm2", GUEST2_MAC, 3.0)


def test_the_probe_is_a_unicast_ns_out_of_the_owners_member(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    claim_from(checks, engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.0), 2.0)
    (probe,) = engine.probe("lan", GUEST1)
    assert probe.interface == "vm1"
    packet = parse_packet(probe.frame)
    assert (packet.dst_mac, packet.src_mac) == (GUEST1_MAC, VM1_MAC)
    assert (packet.ipv6.src, packet.ipv6.dst) == (PROXY_VM1_LL, GUEST1)
    message = parse_nd(packet.data[packet.upper_offset :])
    assert isinstance(message, NeighborSolicitation) and message.target == GUEST1


def test_without_an_address_of_its_own_the_probe_is_a_dad_probe(engine, checks):
    engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST2), 1.0)
    claim_from(checks, engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST2), 2.0), 2.0)
    (probe,) = engine.probe("lan", GUEST2)
    packet = parse_packet(probe.frame)
    assert probe.interface == "vm2" and packet.dst_mac == GUEST2_MAC
    assert (packet.ipv6.src, packet.ipv6.dst) == (parse_ipv6("::"), solicited_node(GUEST2))


def test_the_owner_answering_within_the_bound_refuses_the_claim(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    claim_from(checks, engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.0), 2.0)
    answer = NeighborAdvertisement(
        GUEST1,
        NA_FLAG_SOLICITED,
        (LinkLayerAddressOption(OptionType.TARGET_LINK_LAYER, GUEST1_MAC),),
    )
    # Seen again within the cache's touch granularity: reported all the same.
    actions = engine.handle_frame(
        "vm1", nd_frame(GUEST1_MAC, VM1_MAC, GUEST1, PROXY_VM1_LL, answer), 2.3
    )
    (report,) = [a.neighbor for a in actions if isinstance(a, Learned)]
    settled = checks.owner_seen(engine.neighbors.get(report.group, report.address))
    assert settled is not None and settled.outcome is ClaimOutcome.REFUSED
    assert (settled.claimant, settled.claimant_mac) == ("vm2", GUEST2_MAC)
    entry = engine.neighbors.get("lan", GUEST1)
    assert entry.owned_by("vm1", GUEST1_MAC) and entry.owner_state() is OwnerState.OWNED
    assert checks.due(10.0) == [] and checks.next_deadline() is None


def test_the_owner_silent_moves_the_address_to_the_claimant(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    claim_from(checks, engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.0), 2.0)
    assert checks.next_deadline() == 3.0
    assert checks.due(2.9) == []
    (settled,) = checks.due(3.0)
    assert settled.outcome is ClaimOutcome.MOVED
    entry = engine.neighbors.get("lan", GUEST1)
    assert entry.owned_by("vm2", GUEST2_MAC) and entry.owner_state() is OwnerState.OWNED
    assert engine.neighbors.owned_count("lan", "vm1") == 0
    assert engine.neighbors.owned_count("lan", "vm2") == 1
    # The new owner's frames pass now, the old one's are claims.
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 3.5)
    assert not drops(actions)
    assert claims(engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 3.6))


def test_dad_for_an_owned_address_is_relayed_and_starts_the_check(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    actions = engine.handle_frame("vm2", dad(GUEST2_MAC, GUEST1), 2.0)
    # To the owner's member (it defends the address there), not flooded.
    assert {a.interface for a in actions if isinstance(a, Transmit)} == {"vm1"}
    assert not drops(actions)
    assert isinstance(claim_from(checks, actions, 2.0), Probe)
    (settled,) = checks.due(3.0)  # vm1 let the address go: nobody defends it
    assert settled.outcome is ClaimOutcome.MOVED
    assert engine.neighbors.get("lan", GUEST1).owned_by("vm2", GUEST2_MAC)


def test_dad_for_a_free_or_own_address_is_no_claim(engine):
    assert not claims(engine.handle_frame("vm2", dad(GUEST2_MAC, GUEST2), 1.0))
    engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST2), 1.0)
    assert not claims(engine.handle_frame("vm2", dad(GUEST2_MAC, GUEST2), 2.0))


def test_a_data_packet_from_someone_elses_address_is_dropped_and_claims(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    engine.handle_frame("up0", unsolicited_na(ROUTER_MAC, ROUTER), 1.0)
    spoofed = udp_frame(GUEST2_MAC, VM2_MAC, GUEST1, ROUTER)
    actions = engine.handle_frame("vm2", spoofed, 2.0)
    assert drops(actions) == [DropReason.SOURCE_INVALID]
    assert not [a for a in actions if isinstance(a, Transmit)]
    assert isinstance(claim_from(checks, actions, 2.0), Probe)
    # The same member with another MAC behind it is another claimant too.
    forged_mac = udp_frame(GUEST2_MAC, VM1_MAC, GUEST1, ROUTER)
    assert drops(engine.handle_frame("vm1", forged_mac, 2.1)) == [DropReason.SOURCE_INVALID]


def test_one_check_per_address_at_a_time(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    claim_from(checks, engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.0), 2.0)
    # The replica shows the check: the engine does not report the claim again.
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.5)
    assert drops(actions) == [DropReason.CLAIM_REFUSED] and not claims(actions)
    assert checks.claim("lan", GUEST1, "up0", ROUTER_MAC, 2.5) is None


def test_router_addresses_learned_upstream_stay_pinned_while_it_answers(engine, checks):
    ra = RouterAdvertisement(router_lifetime_s=1800)
    engine.handle_frame("up0", nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, ra), 1.0)
    engine.topology.groups["lan"].ownership = False  # even where the rest is last-writer-wins
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, ROUTER_LL), 2.0)
    assert drops(actions) == [DropReason.CLAIM_REFUSED]
    assert isinstance(claim_from(checks, actions, 2.0), Probe)
    (probe,) = engine.probe("lan", ROUTER_LL)
    assert probe.interface == "up0" and parse_packet(probe.frame).dst_mac == ROUTER_MAC
    # The router answers (any ND from it for that address), the claim is refused.
    rs_answer = engine.handle_frame(
        "up0", nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, ra), 2.2
    )
    (report,) = [a.neighbor for a in rs_answer if isinstance(a, Learned)]
    settled = checks.owner_seen(engine.neighbors.get("lan", report.address))
    assert settled is not None and settled.outcome is ClaimOutcome.REFUSED
    assert engine.neighbors.get("lan", ROUTER_LL).owned_by("up0", ROUTER_MAC)


def test_while_a_loop_cuts_the_routers_member_off_its_address_stays(engine, checks):
    """The owner check cannot go out of a loop-disabled member; the claim is refused,
    not left to run out as if the router had gone (found by the property test)."""
    ra = RouterAdvertisement(router_lifetime_s=1800)
    engine.handle_frame("up0", nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, ra), 1.0)
    engine.topology.detect_loop("up0", 1.5)
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, ROUTER_LL), 2.0)
    settled = claim_from(checks, actions, 2.0)
    assert isinstance(settled, Settled) and settled.outcome is ClaimOutcome.REFUSED
    assert not checks.due(10.0)
    assert engine.neighbors.get("lan", ROUTER_LL).owned_by("up0", ROUTER_MAC)


def test_a_group_with_ownership_off_is_last_writer_wins(engine, checks):
    engine.topology.groups["lan"].ownership = False
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.0)
    assert not drops(actions) and not claims(actions)
    assert engine.neighbors.get("lan", GUEST1).owned_by("vm2", GUEST2_MAC)
    assert checks.claim("lan", GUEST1, "vm1", GUEST1_MAC, 2.0) is None


def test_over_quota_a_member_claims_nothing_new_and_evicts_nobody(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    addresses = [parse_ipv6(f"2001:db8:1::2:{n:x}") for n in range(5)]
    results = [
        drops(engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, a), 2.0)) for a in addresses
    ]
    assert results == [[], [], [], [], [DropReason.OVER_QUOTA]]
    assert engine.neighbors.owned_count("lan", "vm2") == 4
    assert engine.neighbors.get("lan", addresses[4]) is None
    assert engine.neighbors.get("lan", GUEST1).owned_by("vm1", GUEST1_MAC)
    # Nor may it take over an owned address: the check is refused up front.
    settled = checks.claim("lan", GUEST1, "vm2", GUEST2_MAC, 3.0)
    assert isinstance(settled, Settled) and settled.outcome is ClaimOutcome.OVER_QUOTA
    assert engine.neighbors.get("lan", GUEST1).owner_state() is OwnerState.OWNED
    # The upstream speaks for a whole link: no quota there.
    for n in range(6):
        address = parse_ipv6(f"2001:db8:1::3:{n:x}")
        assert not drops(engine.handle_frame("up0", unsolicited_na(ROUTER_MAC, address), 2.0))


def test_judge_names_every_verdict(engine):
    cache = engine.neighbors
    topology = engine.topology
    assert judge(topology, cache, "lan", GUEST1, "vm1", GUEST1_MAC) is Verdict.FREE
    cache.learn("lan", GUEST1, "vm1", GUEST1_MAC, 1.0)
    assert judge(topology, cache, "lan", GUEST1, "vm1", GUEST1_MAC) is Verdict.OWNER
    assert judge(topology, cache, "lan", GUEST1, "vm1", GUEST2_MAC) is Verdict.CLAIM
    assert judge(topology, cache, "lan", GUEST1, "vm2", GUEST1_MAC) is Verdict.CLAIM


def test_the_capacity_eviction_rule_takes_from_the_largest_owner():
    cache = NeighborCache(capacity=6, per_member_limit=100)
    for n in range(2):  # vm1: the oldest entries, but the fewest
        cache.learn("lan", parse_ipv6(f"2001:db8:1::1:{n}"), "vm1", GUEST1_MAC, float(n))
    for n in range(4):
        cache.learn("lan", parse_ipv6(f"2001:db8:1::2:{n}"), "vm2", GUEST2_MAC, 10.0 + n)
    cache.learn("lan", parse_ipv6("2001:db8:1::2:ff"), "vm2", GUEST2_MAC, 20.0)
    assert cache.owned_count("lan", "vm1") == 2, "the flooder's own oldest entry went"
    assert cache.get("lan", parse_ipv6("2001:db8:1::2:0")) is None
    cache.learn("lan", parse_ipv6("2001:db8:1::1:9"), "vm1", GUEST1_MAC, 21.0)
    assert cache.owned_count("lan", "vm1") == 3 and cache.owned_count("lan", "vm2") == 3
    assert cache.evicted == 2


def test_claim_checks_are_rate_limited_per_claimant(engine):
    checks = OwnerChecks(engine.topology, engine.neighbors, checks_per_s=1.0, check_burst=2)
    engine.neighbors.per_member_limit = 100
    owned = [parse_ipv6(f"2001:db8:1::1:{n:x}") for n in range(4)]
    for address in owned:
        engine.neighbors.learn("lan", address, "vm1", GUEST1_MAC, 1.0)
    started = [checks.claim("lan", a, "vm2", GUEST2_MAC, 2.0) for a in owned]
    assert [isinstance(p, Probe) for p in started] == [True, True, False, False]
    # Another claimant has its own bucket.
    assert isinstance(checks.claim("lan", owned[3], "up0", ROUTER_MAC, 2.0), Probe)
    assert isinstance(checks.claim("lan", owned[2], "vm2", GUEST2_MAC, 3.0), Probe)


def test_the_proxys_work_for_a_member_is_rate_limited_per_member():
    engine = Engine(lab_topology(), member_work_per_s=1.0, member_work_burst=3)
    ra = RouterAdvertisement(router_lifetime_s=1800)
    engine.handle_frame("up0", nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, ra), 0.0)
    solicits = []
    for n in range(6):  # vm1 floods data to unknown on-link destinations
        target = parse_ipv6(f"fe80::99:{n:x}")
        actions = engine.handle_frame("vm1", udp_frame(GUEST1_MAC, VM1_MAC, GUEST1, target), 1.0)
        solicits.append(sum(isinstance(a, Transmit) for a in actions))
    assert solicits == [2, 2, 2, 0, 0, 0], "vm1's share is spent"
    assert engine.counters["member_work_limited"] == 3
    # vm2's resolution still goes out.
    target = parse_ipv6("fe80::99:ff")
    actions = engine.handle_frame("vm2", udp_frame(GUEST2_MAC, VM2_MAC, GUEST2, target), 1.0)
    assert {a.interface for a in actions if isinstance(a, Transmit)} == {"up0", "vm1"}


def test_token_buckets_refill_with_time():
    buckets = TokenBuckets(rate_per_s=2.0, burst=2)
    assert [buckets.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.allow("b", 0.0)
    assert not buckets.allow("a", 0.4)
    assert buckets.allow("a", 0.6)
    assert buckets.refused == 2


def test_an_entry_checked_away_keeps_no_stale_deadline(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    claim_from(checks, engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.0), 2.0)
    engine.neighbors.flush("lan")
    assert checks.due(5.0) == []
    assert checks.next_deadline() is None
    assert UP_MAC  # the upstream's MAC is the proxy's own: never a claimant
    assert ALL_ROUTERS


def test_an_address_named_by_the_routers_ra_is_pinned_to_the_router(engine, checks):
    pio = PrefixInformation(64, 0x80 | 0x40 | 0x20, 86400, 14400, ROUTER)
    ra = RouterAdvertisement(router_lifetime_s=1800, options=(pio,))
    engine.handle_frame("up0", nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, ra), 1.0)
    entry = engine.neighbors.get("lan", ROUTER)
    assert entry is not None and entry.owned_by("up0", ROUTER_MAC) and entry.is_router
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, ROUTER), 2.0)
    assert drops(actions) == [DropReason.CLAIM_REFUSED] and claims(actions)


def test_on_link_dns_servers_the_routers_ra_names_are_pinned_before_a_guest_can(engine, checks):
    """RDNSS: the on-link servers nobody holds go to the router (they are most often
    the router itself), so a guest cannot take the DNS address before it speaks."""
    dns, off_link = parse_ipv6("2001:db8:1::53"), parse_ipv6("2001:4860:4860::8888")
    held = parse_ipv6("2001:db8:1::54")
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, held), 0.5)  # vm1 has it already
    pio = PrefixInformation(64, 0x80 | 0x40, 86400, 14400, parse_ipv6("2001:db8:1::"))
    rdnss = RecursiveDnsServers(1800, (dns, off_link, held))
    ra = RouterAdvertisement(router_lifetime_s=1800, options=(pio, rdnss))
    actions = engine.handle_frame("up0", nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, ra), 1.0)
    assert not claims(actions)  # vm1's address is not taken from it by the RA
    entry = engine.neighbors.get("lan", dns)
    assert entry is not None and entry.owned_by("up0", ROUTER_MAC) and entry.is_router
    assert engine.neighbors.get("lan", off_link) is None
    assert engine.neighbors.get("lan", held).owned_by("vm1", GUEST1_MAC)
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, dns), 2.0)
    assert drops(actions) == [DropReason.CLAIM_REFUSED] and claims(actions)
    # A lifetime of 0 withdraws the servers: nothing is pinned by it.
    gone = parse_ipv6("2001:db8:1::55")
    withdrawn = RouterAdvertisement(options=(pio, RecursiveDnsServers(0, (gone,))))
    engine.handle_frame("up0", nd_frame(ROUTER_MAC, None, ROUTER_LL, ALL_NODES, withdrawn), 3.0)
    assert engine.neighbors.get("lan", gone) is None


def test_a_check_left_over_from_a_restart_does_not_block_new_claims(engine, checks):
    engine.handle_frame("vm1", unsolicited_na(GUEST1_MAC, GUEST1), 1.0)
    engine.neighbors.get("lan", GUEST1).check_until = 1.5  # nobody runs this check
    actions = engine.handle_frame("vm2", unsolicited_na(GUEST2_MAC, GUEST1), 2.0)
    assert isinstance(claim_from(checks, actions, 2.0), Probe)
