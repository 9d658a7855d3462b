"""The tc program's maps filled from a Topology and a NeighborCache, as the supervisor
fills them, and the small topology the oracle tests share.

The packing below is the map layout of supervisor/bpf/portier_tc.c, in native
alignment (`@`): the C structs have no packed attributes.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from portier.addresses import parse_ipv6, parse_mac
from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.supervisor import bpfload
from portier.supervisor.bpfpath import BpfPath, GroupNumbers, wanted

MEMBER = struct.Struct("@II6s2x16s")
ROUTE_KEY = struct.Struct("@I16s")
ROUTE = struct.Struct("@II6s6sIIQ")
SOURCE_KEY = struct.Struct("@I16s")
PREFIX_KEY = struct.Struct("@II16s")
assert (MEMBER.size, ROUTE_KEY.size, ROUTE.size, SOURCE_KEY.size, PREFIX_KEY.size) == (
    32,
    20,
    40,
    20,
    24,
)
MEMBER_ENABLED, MEMBER_HAS_ROUTER = 1, 2
ROUTE_CHECKING, ROUTE_ROUTER = 1, 2
NS_PER_S = 1_000_000_000


def ns(seconds: float) -> int:
    """A time of the engine's clock (time.monotonic, CLOCK_MONOTONIC) in the kernel's."""
    return int(seconds * NS_PER_S)


def fill_maps(
    tc: bpfload.TcObject,
    topology: Topology,
    neighbors: NeighborCache,
    now: float,
    group_numbers: dict[str, int],
    *,
    live_until: float | None = None,
) -> None:
    """Program everything the state says, with the supervisor's own code (bpfpath.py).

    `live_until` (engine clock) is the supervisor's liveness: None means now + 10 s.
    Whatever the hash and trie maps held before goes first.
    """
    for name, key_size in (
        ("members", 4),
        ("routes", ROUTE_KEY.size),
        ("owners", ROUTE_KEY.size),
        ("onlink", PREFIX_KEY.size),
    ):
        clear_map(tc, name, key_size)
    path = BpfPath()
    path.adopt(tc)
    path.write_maps(wanted(topology, neighbors, now, GroupNumbers(group_numbers)))
    set_liveness(tc, ns(now + 10.0) if live_until is None else ns(live_until))


def _libbpf(tc: bpfload.TcObject) -> ctypes.CDLL:
    lib = ctypes.CDLL(tc._lib._name, use_errno=True)
    lib.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.libbpf_num_possible_cpus.restype = ctypes.c_int
    return lib


def clear_map(tc: bpfload.TcObject, name: str, key_size: int) -> None:
    lib, fd = _libbpf(tc), tc.map_fd(name)
    key = ctypes.create_string_buffer(key_size)
    while lib.bpf_map_get_next_key(fd, None, key) == 0:
        tc.delete(name, key.raw)


def set_liveness(tc: bpfload.TcObject, until_ns: int) -> None:
    tc.update("liveness", struct.pack("@I", 0), struct.pack("@Q", until_ns))


def answered(tc: bpfload.TcObject, counter: str = "answered") -> int:
    """A per-CPU counter (`answered` unless named), summed over the CPUs, as the
    supervisor reads it."""
    path = BpfPath()
    path.adopt(tc)
    return path.counter(counter)


# --- the topology the oracle tests share ---------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    address: bytes
    mac: bytes
    member: str
    is_router: bool = False


GROUP = "g"
GROUP_NUMBER = 7
UP, DOWN1, DOWN2 = "up0", "dn1", "dn2"
MACS = {
    UP: parse_mac("02:00:00:00:00:01"),
    DOWN1: parse_mac("02:00:00:00:00:02"),
    DOWN2: parse_mac("02:00:00:00:00:03"),
}
MTUS = {UP: 1500, DOWN1: 1500, DOWN2: 1400}
PREFIX = parse_ipv6("2001:db8:1::")
HOSTS = {
    h.name: h
    for h in (
        Host("router", parse_ipv6("fe80::1"), parse_mac("0a:00:00:00:00:01"), UP, True),
        Host("peer", parse_ipv6("2001:db8:1::99"), parse_mac("0a:00:00:00:00:99"), UP),
        Host("h1", parse_ipv6("2001:db8:1::11"), parse_mac("0a:00:00:00:00:11"), DOWN1),
        Host("h3", parse_ipv6("2001:db8:1::13"), parse_mac("0a:00:00:00:00:13"), DOWN1),
        Host("h2", parse_ipv6("2001:db8:1::22"), parse_mac("0a:00:00:00:00:22"), DOWN2),
    )
}


def build_state(
    ifindexes: dict[str, int], now: float, *, last_seen: float | None = None
) -> tuple[Topology, NeighborCache]:
    """One group: the upstream with its router and a peer, two downstream members with
    their guests; 2001:db8:1::/64 on-link.  Every neighbor last seen `last_seen` (now)."""
    topology = Topology()
    topology.create_group(GROUP)
    for name in (UP, DOWN1, DOWN2):
        topology.bind(name)
        topology.update_link(
            name,
            ifindex=ifindexes[name],
            mac=MACS[name],
            mtu=MTUS[name],
            addresses=[parse_ipv6(f"fe80::ff:{ifindexes[name] & 0xFFFF:x}")],
        )
        topology.add_to_group(name, GROUP, upstream=name == UP)
    topology.groups[GROUP].onlink_prefixes[(PREFIX, 64)] = float("inf")
    neighbors = NeighborCache()
    seen = now if last_seen is None else last_seen
    for host in HOSTS.values():
        neighbors.put(
            Neighbor(
                GROUP,
                host.address,
                host.member,
                host.mac,
                host.is_router,
                first_seen=seen,
                last_seen=seen,
                reported_at=seen,
            )
        )
    return topology, neighbors
