"""What `make demo` shows until the end-to-end lab exists: the core on crafted frames.

A router on the upstream `up0` and a guest on `vm1`, both in group `lan`.  Each step feeds
one frame to the engine and prints what it decided, so a reader sees RFC 4389 at work:
SLAAC traffic proxied with the P flag, link-layer options rewritten, neighbors learned,
unicast forwarded with the hop limit untouched, and a held packet released.
"""

from __future__ import annotations

from portier.addresses import (
    ALL_NODES,
    ALL_ROUTERS,
    format_ipv6,
    format_mac,
    multicast_mac,
    parse_ipv6,
    parse_mac,
    solicited_node,
)
from portier.engine import Engine, Learned, Transmit
from portier.frame import IPv6Header, build_frame, parse_packet
from portier.groups import Topology
from portier.ndmsg import (
    LinkLayerAddressOption,
    NeighborAdvertisement,
    NeighborSolicitation,
    PrefixInformation,
    RouterAdvertisement,
    RouterSolicitation,
    encode_nd,
    parse_nd,
)

UP_MAC, VM_MAC = parse_mac("02:00:00:00:00:01"), parse_mac("02:00:00:00:01:01")
ROUTER_MAC, GUEST_MAC = parse_mac("52:54:00:00:00:01"), parse_mac("52:54:00:00:01:01")
ROUTER_LL, GUEST_LL = parse_ipv6("fe80::1"), parse_ipv6("fe80::5054:ff:fe00:101")
ROUTER, GUEST = parse_ipv6("2001:db8:1::1"), parse_ipv6("2001:db8:1::5054:ff:fe00:101")
PREFIX = parse_ipv6("2001:db8:1::")


def nd_frame(src_mac: bytes, dst_mac: bytes, src: bytes, dst: bytes, message) -> bytes:
    icmp = encode_nd(message, src, dst)
    return build_frame(dst_mac, src_mac, IPv6Header(src, dst, 58, 255, len(icmp)), icmp)


def show(step: str, engine: Engine, ingress: str, frame: bytes, now: float) -> None:
    print(f"\n== {step}  (received on {ingress})")
    for action in engine.handle_frame(ingress, frame, now):
        if isinstance(action, Transmit):
            packet = parse_packet(action.frame)
            line = (
                f"   send on {action.interface}: {format_mac(packet.src_mac)} -> "
                f"{format_mac(packet.dst_mac)}, {format_ipv6(packet.ipv6.src)} -> "
                f"{format_ipv6(packet.ipv6.dst)}, hop limit {packet.ipv6.hop_limit}"
            )
            print(line)
            if packet.upper_protocol == 58 and 133 <= packet.upper[0] <= 137:
                message = parse_nd(packet.upper)
                options = ", ".join(
                    f"{type(o).__name__}({format_mac(o.address)})"
                    if isinstance(o, LinkLayerAddressOption)
                    else type(o).__name__
                    for o in message.options
                )
                print(
                    f"     {type(message).__name__} flags 0x{getattr(message, 'flags', 0):02x} "
                    f"[{options}]"
                )
        elif isinstance(action, Learned):
            entry = action.neighbor
            role = " (router)" if entry.is_router else ""
            print(f"   learned {format_ipv6(entry.address)} on {entry.interface}{role}")
        else:
            print(f"   {type(action).__name__}: {action}")


def main() -> None:
    print("Portier core demo: the sans-I/O engine on crafted frames.")
    print("(The end-to-end lab with network namespaces, radvd and portierd comes with the")
    print(" lab issue; until then `make demo` runs what exists: the core library.)")
    topology = Topology()
    for index, (name, mac) in enumerate((("up0", UP_MAC), ("vm1", VM_MAC)), start=2):
        topology.bind(name)
        topology.update_link(name, ifindex=index, mac=mac, mtu=1500, addresses=[])
    topology.create_group("lan")
    topology.add_to_group("up0", "lan", upstream=True)
    topology.add_to_group("vm1", "lan")
    engine = Engine(topology)

    rs = RouterSolicitation((LinkLayerAddressOption(1, GUEST_MAC),))
    show(
        "guest sends a Router Solicitation",
        engine,
        "vm1",
        nd_frame(GUEST_MAC, multicast_mac(ALL_ROUTERS), GUEST_LL, ALL_ROUTERS, rs),
        1.0,
    )
    ra = RouterAdvertisement(
        64,
        0,
        1800,
        0,
        0,
        (
            LinkLayerAddressOption(1, ROUTER_MAC),
            PrefixInformation(64, 0xC0, 86400, 14400, PREFIX),
        ),
    )
    show(
        "router answers with a Router Advertisement",
        engine,
        "up0",
        nd_frame(ROUTER_MAC, multicast_mac(ALL_NODES), ROUTER_LL, ALL_NODES, ra),
        1.1,
    )
    target = solicited_node(ROUTER)
    ns = NeighborSolicitation(ROUTER, (LinkLayerAddressOption(1, GUEST_MAC),))
    show(
        "guest resolves the router's global address",
        engine,
        "vm1",
        nd_frame(GUEST_MAC, multicast_mac(target), GUEST, target, ns),
        1.2,
    )
    na = NeighborAdvertisement(ROUTER, 0xE0, (LinkLayerAddressOption(2, ROUTER_MAC),))
    show(
        "router answers the solicitation",
        engine,
        "up0",
        nd_frame(ROUTER_MAC, UP_MAC, ROUTER, GUEST, na),
        1.3,
    )
    ping = b"\x80\x00\x00\x00\x00\x01\x00\x01"
    show(
        "guest pings the router (hop limit 64 stays 64)",
        engine,
        "vm1",
        build_frame(VM_MAC, GUEST_MAC, IPv6Header(GUEST, ROUTER, 58, 64, len(ping)), ping),
        1.4,
    )
    print("\nneighbor cache:")
    for entry in engine.neighbors:
        role = " router" if entry.is_router else ""
        print(
            f"   {entry.group} {format_ipv6(entry.address):<32} on {entry.interface} "
            f"{format_mac(entry.mac)} {entry.state(1.5).value}{role}"
        )


if __name__ == "__main__":
    main()
