"""Neighbor cache: learning, refresh, expiry with an injected clock, bounds, flushes."""

from portier.addresses import parse_ipv6, parse_mac
from portier.neighbors import NeighborCache, NeighborState

A = parse_ipv6("2620:15c:202:201::1")
B = parse_ipv6("2620:15c:202:201::2")
C = parse_ipv6("2620:15c:202:201::3")
N1 = parse_ipv6("2620:15c:202:201:f155:a038:ae18:faf2")
MAC1 = parse_mac("00:00:5e:00:02:65")
MAC2 = parse_mac("ac:4b:c8:4c:c7:f0")


def test_learn_new_then_quiet_refresh_then_change():
    cache = NeighborCache(lifetime_s=600)
    entry = cache.learn("lan", N1, "vmtap0", MAC1, 10.0)
    assert entry is not None and entry.first_seen == 10.0
    assert cache.learn("lan", N1, "vmtap0", MAC1, 10.5) is None  # nothing to report
    moved = cache.learn("lan", N1, "vmtap1", MAC2, 11.0)
    assert moved is not None and (moved.interface, moved.mac) == ("vmtap1", MAC2)
    assert cache.get("lan", N1).last_seen == 11.0


def test_same_address_in_two_groups_is_two_entries():
    cache = NeighborCache()
    cache.learn("lan", N1, "eth0", MAC1, 0.0)
    cache.learn("wifi", N1, "wan0", MAC2, 0.0)
    assert cache.get("lan", N1).interface == "eth0"
    assert cache.get("wifi", N1).interface == "wan0"
    assert len(cache) == 2


def test_refresh_is_reported_periodically():
    cache = NeighborCache(lifetime_s=400)  # report interval 100 s
    cache.learn("lan", N1, "eth0", MAC1, 0.0)
    assert cache.learn("lan", N1, "eth0", MAC1, 50.0) is None
    assert cache.learn("lan", N1, "eth0", MAC1, 100.0) is not None


def test_expiry_with_injected_clock():
    """As the original's fixture: entries older than the lifetime go, younger ones stay."""
    now = 100_000.0
    for age, survives in [
        (1, True),
        (12, True),
        (29, True),
        (30, False),
        (1800, False),
        (108000, False),
    ]:
        cache = NeighborCache(lifetime_s=30)
        cache.learn("lan", N1, "eth0", MAC1, now - age)
        assert [e.address for e in cache.expire(now)] == ([] if survives else [N1])
        assert (cache.get("lan", N1) is not None) == survives


def test_reinsert_moves_expiry_forward():
    cache = NeighborCache(lifetime_s=30)
    cache.learn("lan", N1, "eth0", MAC1, 0.0)
    assert cache.next_deadline() == 30.0
    cache.learn("lan", N1, "eth0", MAC1, 1800.0)
    assert cache.next_deadline() == 1830.0


def test_reachable_decays_to_stale():
    cache = NeighborCache(reachable_s=30)
    entry = cache.learn("lan", A, "eth0", MAC1, 0.0, confirmed=True)
    assert entry.state(29.9) == NeighborState.REACHABLE
    assert entry.state(30.0) == NeighborState.STALE


def test_bounded_cache_evicts_least_recently_seen():
    cache = NeighborCache(capacity=2)
    cache.learn("lan", A, "eth0", MAC1, 0.0)
    cache.learn("lan", B, "eth0", MAC1, 1.0)
    cache.learn("lan", A, "eth0", MAC1, 5.0)  # A seen again: B is now the oldest
    cache.learn("lan", C, "eth0", MAC1, 6.0)
    assert cache.get("lan", B) is None
    assert cache.get("lan", A) is not None and cache.get("lan", C) is not None
    assert cache.evicted == 1 and len(cache) == 2


def test_flush_by_group_and_interface():
    cache = NeighborCache()
    cache.learn("lan", A, "eth0", MAC1, 0.0)
    cache.learn("lan", N1, "vmtap0", MAC2, 0.0)
    cache.learn("wifi", B, "wan0", MAC2, 0.0)
    assert [e.address for e in cache.flush_interface("vmtap0")] == [N1]
    assert [e.address for e in cache.flush("lan")] == [A]
    assert len(cache) == 1
    assert len(cache.flush()) == 1 and len(cache) == 0


def test_router_selection():
    cache = NeighborCache(reachable_s=30)
    cache.learn("lan", A, "eth0", MAC1, 0.0, is_router=True)
    cache.learn("wifi", B, "wan0", MAC2, 0.0, is_router=True, confirmed=True)
    cache.learn("wifi", C, "wan0", MAC2, 1.0, is_router=True)
    cache.learn("lan", N1, "eth0", MAC1, 2.0)  # not a router
    assert cache.best_router("lan", "eth0", 5.0).address == A
    assert cache.best_router("wifi", "wan0", 5.0).address == B  # reachable beats stale
    assert cache.best_router("wifi", "eth0", 5.0) is None
    assert cache.best_router("lan", "wan0", 5.0) is None
    cache.remove("wifi", B)
    assert cache.best_router("wifi", "wan0", 5.0).address == C
    cache.learn("wifi", C, "wan0", MAC2, 6.0, is_router=False)  # NA without R flag
    assert cache.best_router("wifi", "wan0", 6.0) is None
