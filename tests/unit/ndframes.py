"""Frame builders for the unit tests: a router on up0, guests on vm1/vm2, in group lan."""

from __future__ import annotations

from portier.addresses import multicast_mac, parse_ipv6, parse_mac
from portier.frame import IPv6Header, build_frame
from portier.groups import Topology
from portier.ndmsg import NDMessage, encode_nd

UP_MAC = parse_mac("02:00:00:00:00:01")
VM1_MAC = parse_mac("02:00:00:00:01:01")
VM2_MAC = parse_mac("02:00:00:00:01:02")
OTHER_MAC = parse_mac("02:00:00:00:02:01")
ROUTER_MAC = parse_mac("52:54:00:00:00:01")
GUEST1_MAC = parse_mac("52:54:00:00:01:01")
GUEST2_MAC = parse_mac("52:54:00:00:01:02")
GUEST3_MAC = parse_mac("52:54:00:00:02:01")

ROUTER_LL = parse_ipv6("fe80::1")
GUEST1_LL = parse_ipv6("fe80::5054:ff:fe00:101")
ROUTER = parse_ipv6("2001:db8:1::1")
GUEST1 = parse_ipv6("2001:db8:1::101")
GUEST2 = parse_ipv6("2001:db8:1::102")
GUEST3 = parse_ipv6("2001:db8:1::201")
REMOTE = parse_ipv6("2001:db8:ffff::9")
PREFIX = parse_ipv6("2001:db8:1::")
PROXY_UP_LL = parse_ipv6("fe80::ff:fe00:1")
PROXY_VM1_LL = parse_ipv6("fe80::ff:fe00:101")


def nd_frame(
    src_mac: bytes,
    dst_mac: bytes | None,
    src: bytes,
    dst: bytes,
    message: NDMessage,
    *,
    hop_limit: int = 255,
) -> bytes:
    icmp = encode_nd(message, src, dst)
    header = IPv6Header(src, dst, 58, hop_limit, len(icmp))
    return build_frame(dst_mac or multicast_mac(dst), src_mac, header, icmp)


def udp_frame(
    src_mac: bytes, dst_mac: bytes, src: bytes, dst: bytes, *, size: int = 26, hop_limit: int = 64
) -> bytes:
    payload = bytes(range(size % 256)) + bytes(max(0, size - 256))
    payload = payload[:size]
    header = IPv6Header(src, dst, 17, hop_limit, len(payload))
    return build_frame(dst_mac, src_mac, header, payload)


def lab_topology(*, nested: bool = False, loop_disable_s: float = 3600.0) -> Topology:
    """up0 (upstream) + vm1 + vm2 in `lan`; vm3 alone in group `other`."""
    topology = Topology(nested=nested, loop_disable_s=loop_disable_s)
    links = {
        "up0": (UP_MAC, 2, [PROXY_UP_LL]),
        "vm1": (VM1_MAC, 3, [PROXY_VM1_LL]),
        "vm2": (VM2_MAC, 4, []),
        "vm3": (OTHER_MAC, 5, []),
    }
    for name, (mac, index, addresses) in links.items():
        assert topology.bind(name)
        assert topology.update_link(name, ifindex=index, mac=mac, mtu=1500, addresses=addresses)
    assert topology.create_group("lan")
    assert topology.create_group("other")
    assert topology.add_to_group("up0", "lan", upstream=True)
    assert topology.add_to_group("vm1", "lan")
    assert topology.add_to_group("vm2", "lan")
    assert topology.add_to_group("vm3", "other")
    return topology
