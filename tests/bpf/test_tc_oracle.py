"""The tc program's verdicts held to the Python engine's decisions (BPF_PROG_TEST_RUN).

Each case builds one state (bpfstate.build_state), fills the maps from it the way the
supervisor does, and feeds the same frame to `Engine.handle_frame` and to the program.
The engine is the oracle: one Transmit of the frame to a unicast MAC out of another
member means the kernel redirects it with the same bytes; anything else (ND, fan-out,
holds, drops, Packet Too Big) means TC_ACT_OK with the frame unchanged, for the workers.

The ifindexes are far above any real device's, so nothing here can reach one.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bpfstate import (
    DOWN1,
    DOWN2,
    GROUP,
    GROUP_NUMBER,
    HOSTS,
    MACS,
    UP,
    build_state,
    fill_maps,
)

from portier.addresses import multicast_mac, parse_ipv6, solicited_node
from portier.engine import Action, Engine, Transmit
from portier.frame import NH_ICMPV6, IPv6Header, build_frame
from portier.groups import Topology
from portier.ndmsg import (
    LinkLayerAddressOption,
    NDMessage,
    NeighborAdvertisement,
    NeighborSolicitation,
    OptionType,
    Redirect,
    RouterAdvertisement,
    RouterSolicitation,
    encode_nd,
)
from portier.neighbors import NeighborCache
from portier.supervisor import bpfload
from portier.supervisor.bpfpath import BpfPath

IFINDEX = {UP: 900021, DOWN1: 900022, DOWN2: 900023}
ND_TYPES = range(133, 138)


@pytest.fixture(scope="module")
def tc_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bpfload.compile_object(Path(tmp_path_factory.mktemp("bpf")) / "portier_tc.o")


class Case:
    """One state, shared by the engine and a freshly loaded program."""

    def __init__(self, obj: Path) -> None:
        self.now = time.monotonic()
        self.topology, self.neighbors = build_state(IFINDEX, self.now)
        self.tc = bpfload.TcObject(obj)
        self.path = BpfPath()  # the supervisor's reader of the program's counters
        self.path.adopt(self.tc)

    @property
    def state(self) -> tuple[Topology, NeighborCache]:
        return self.topology, self.neighbors

    def program(self) -> None:
        fill_maps(self.tc, self.topology, self.neighbors, self.now, {GROUP: GROUP_NUMBER})

    def run(self, ingress: str, frame: bytes, **gso: int) -> tuple[int, bytes, list[Action]]:
        """Program the maps, then ask both; returns the kernel's verdict and bytes and the
        engine's actions, having checked that the kernel did what the engine says."""
        self.program()
        segment = 0
        if gso.get("gso_size"):
            segment = _segment_bytes(frame, gso["gso_size"])
        engine = Engine(self.topology, self.neighbors)
        actions = engine.handle_frame(ingress, frame, self.now, segment_bytes=segment)
        forwarded = self.path.counter("forwarded")
        verdict, out = self.tc.test_run(frame, IFINDEX.get(ingress, 900099), **gso)
        redirected = verdict == bpfload.TC_ACT_REDIRECT
        assert self.path.counter("forwarded") == forwarded + redirected
        forwards = [
            a
            for a in actions
            if isinstance(a, Transmit) and a.interface != ingress and not a.frame[0] & 1
        ]
        if len(forwards) == 1 and not _is_nd(frame):
            assert verdict == bpfload.TC_ACT_REDIRECT, actions
            assert out == forwards[0].frame
        else:
            assert verdict == bpfload.TC_ACT_OK, actions
            assert out == frame
        return verdict, out, actions

    def close(self) -> None:
        self.tc.close()


@pytest.fixture
def case(tc_object: Path) -> Iterator[Case]:
    made = Case(tc_object)
    yield made
    made.close()


# --- frames ------------------------------------------------------------------------------


def _packet(
    src: bytes,
    dst: bytes,
    *,
    src_mac: bytes,
    dst_mac: bytes,
    nh: int = 17,
    payload: bytes = b"u" * 24,
    hlim: int = 64,
    payload_length: int | None = None,
) -> bytes:
    length = len(payload) if payload_length is None else payload_length
    header = struct.pack("!IHBB", 6 << 28 | 0x12345, length, nh, hlim) + src + dst
    return dst_mac + src_mac + b"\x86\xdd" + header + payload


def data(src: str, dst: bytes | str, ingress: str | None = None, **kw: object) -> bytes:
    """A frame from guest `src` as it arrives on its member (to the member's MAC)."""
    host = HOSTS[src]
    target = HOSTS[dst].address if isinstance(dst, str) else dst
    kw.setdefault("dst_mac", MACS[ingress or host.member])
    return _packet(host.address, target, src_mac=host.mac, **kw)  # type: ignore[arg-type]


def nd_frame(kind: int, src: str, dst: str) -> bytes:
    """A valid unicast ND message of `kind` from guest `src` to guest `dst`."""
    s, d = HOSTS[src], HOSTS[dst]
    slla = (LinkLayerAddressOption(OptionType.SOURCE_LINK_LAYER, s.mac),)
    messages: dict[int, NDMessage] = {
        133: RouterSolicitation(slla),
        134: RouterAdvertisement(options=slla),
        135: NeighborSolicitation(d.address, slla),
        136: NeighborAdvertisement(
            s.address, 0x60, (LinkLayerAddressOption(OptionType.TARGET_LINK_LAYER, s.mac),)
        ),
        137: Redirect(d.address, d.address),
    }
    icmp = encode_nd(messages[kind], s.address, d.address)
    header = IPv6Header(s.address, d.address, NH_ICMPV6, 255, len(icmp))
    return build_frame(MACS[s.member], s.mac, header, icmp)


def _tcp(payload_bytes: int) -> bytes:
    # ports, seq, ack, data offset 5 (20 bytes), ACK, window, checksum, urgent
    header = struct.pack("!HHIIBBHHH", 4000, 80, 1, 1, 5 << 4, 0x10, 512, 0, 0)
    return header + bytes(payload_bytes)


def _segment_bytes(frame: bytes, gso_size: int) -> int:
    """workers/packetio.segment_bytes for a TCP super-frame right after IPv6."""
    return 40 + (frame[54 + 12] >> 4) * 4 + gso_size


def _is_nd(frame: bytes) -> bool:
    nh, offset = frame[20], 54
    while nh in (0, 60) and offset + 8 <= len(frame):
        nh, offset = frame[offset], offset + (frame[offset + 1] + 1) * 8
    return nh == NH_ICMPV6 and offset < len(frame) and frame[offset] in ND_TYPES


# --- forwarding ----------------------------------------------------------------------------


def test_unicast_to_a_neighbor_behind_another_member_is_redirected(case: Case) -> None:
    frame = data("h1", "h2")
    verdict, out, _ = case.run(DOWN1, frame)
    assert verdict == bpfload.TC_ACT_REDIRECT
    assert out[:12] == HOSTS["h2"].mac + MACS[DOWN2]
    assert out[12:] == frame[12:]  # hop limit, flow label and payload untouched


def test_upstream_peer_to_a_guest_is_redirected(case: Case) -> None:
    verdict, out, _ = case.run(UP, data("peer", "h1"))
    assert verdict == bpfload.TC_ACT_REDIRECT
    assert out[:12] == HOSTS["h1"].mac + MACS[DOWN1]


def test_off_link_destination_goes_to_the_router(case: Case) -> None:
    verdict, out, _ = case.run(DOWN1, data("h1", parse_ipv6("2001:db8:ffff::1")))
    assert verdict == bpfload.TC_ACT_REDIRECT
    assert out[:12] == HOSTS["router"].mac + MACS[UP]


def test_off_link_without_a_known_router_goes_up(case: Case) -> None:
    case.neighbors.remove(GROUP, HOSTS["router"].address)
    case.run(DOWN1, data("h1", parse_ipv6("2001:db8:ffff::1")))


def test_off_link_from_the_upstream_goes_up(case: Case) -> None:
    case.run(UP, data("peer", parse_ipv6("2001:db8:ffff::1")))


@pytest.mark.parametrize("dst", ["2001:db8:1::77", "fe80::77"])
def test_on_link_miss_goes_up(case: Case, dst: str) -> None:
    _, _, actions = case.run(DOWN1, data("h1", parse_ipv6(dst)))
    assert case.neighbors.get(GROUP, parse_ipv6(dst)) is None
    assert any(isinstance(a, Transmit) for a in actions)  # the engine solicits it


def test_hairpin_goes_up(case: Case) -> None:
    case.run(DOWN1, data("h1", "h3"))


def test_too_big_for_the_egress_goes_up(case: Case) -> None:
    # 1400 of IPv6 fits dn2; 1401 does not (the engine sends Packet Too Big).
    fits = data("h1", "h2", payload=b"x" * (1400 - 40))
    assert case.run(DOWN1, fits)[0] == bpfload.TC_ACT_REDIRECT
    _, _, actions = case.run(DOWN1, data("h1", "h2", payload=b"x" * (1401 - 40)))
    assert any(isinstance(a, Transmit) and a.interface == DOWN1 for a in actions)  # the PTB


def test_gro_super_packet_is_judged_by_its_segments(case: Case) -> None:
    frame = data("peer", "h1", nh=6, payload=_tcp(3000))
    assert case.run(UP, frame, gso_size=1440, gso_segs=3)[0] == bpfload.TC_ACT_REDIRECT
    # 40 + 20 + 1381 does not fit dn2's 1400: up, for Packet Too Big
    case.run(UP, data("peer", "h2", nh=6, payload=_tcp(3000)), gso_size=1341, gso_segs=3)
    assert case.run(UP, frame)[0] == bpfload.TC_ACT_OK  # the same bytes, not GRO: too big


def test_foreign_source_goes_up(case: Case) -> None:
    # dn1 sends with h2's address (h2 lives behind dn2): the workers drop and report it.
    frame = _packet(
        HOSTS["h2"].address,
        HOSTS["peer"].address,
        src_mac=HOSTS["h1"].mac,
        dst_mac=MACS[DOWN1],
    )
    case.run(DOWN1, frame)


def test_own_address_with_another_mac_goes_up(case: Case) -> None:
    # h1's address from h1's own member, but not from h1's MAC: a claim all the same.
    frame = _packet(
        HOSTS["h1"].address,
        HOSTS["peer"].address,
        src_mac=bytes.fromhex("0a00000000ee"),
        dst_mac=MACS[DOWN1],
    )
    case.run(DOWN1, frame)
    # From h1's MAC it is forwarded.
    frame = _packet(
        HOSTS["h1"].address, HOSTS["peer"].address, src_mac=HOSTS["h1"].mac, dst_mac=MACS[DOWN1]
    )
    assert case.run(DOWN1, frame)[0] == bpfload.TC_ACT_REDIRECT


def test_vlan_tagged_frame_goes_up_counted(case: Case) -> None:
    plain = data("h1", "h2")
    for tpid in (b"\x81\x00", b"\x88\xa8"):  # 802.1Q, 802.1ad
        case.run(DOWN1, plain[:12] + tpid + b"\x00\x05" + plain[12:])
    assert case.path.counter("tagged") == 2
    case.run(DOWN1, plain)
    assert case.path.counter("tagged") == 2


def test_icmpv6_echo_is_forwarded_like_data(case: Case) -> None:
    echo = b"\x80\x00\x00\x00\x12\x34\x00\x01" + b"ping" * 8
    verdict, _, _ = case.run(DOWN1, data("h1", "h2", nh=NH_ICMPV6, payload=echo))
    assert verdict == bpfload.TC_ACT_REDIRECT


@pytest.mark.parametrize("kind", ND_TYPES)
def test_every_nd_type_goes_up_even_unicast(case: Case, kind: int) -> None:
    case.run(DOWN1, nd_frame(kind, "h1", "h2"))


def test_nd_behind_a_hop_by_hop_header_goes_up(case: Case) -> None:
    plain = nd_frame(136, "h1", "h2")
    hop_by_hop = bytes((NH_ICMPV6, 0, 1, 4, 0, 0, 0, 0))  # PadN to 8 bytes
    frame = bytearray(plain[:54] + hop_by_hop + plain[54:])
    frame[20] = 0
    frame[18:20] = (len(frame) - 54).to_bytes(2, "big")
    case.run(DOWN1, bytes(frame))


def test_data_behind_extension_headers_is_forwarded(case: Case) -> None:
    options = bytes((17, 0, 1, 4, 0, 0, 0, 0))
    verdict, _, _ = case.run(DOWN1, data("h1", "h2", nh=60, payload=options + b"u" * 16))
    assert verdict == bpfload.TC_ACT_REDIRECT
    later_fragment = struct.pack("!BBHI", 17, 0, 0x0010, 99) + b"f" * 16
    verdict, _, _ = case.run(DOWN1, data("h1", "h2", nh=44, payload=later_fragment))
    assert verdict == bpfload.TC_ACT_REDIRECT


def test_broken_extension_header_goes_up(case: Case) -> None:
    case.run(DOWN1, data("h1", "h2", nh=60, payload=bytes((17, 9)) + bytes(14)))


@pytest.mark.parametrize(
    "dst",
    [parse_ipv6("ff02::1"), solicited_node(HOSTS["h2"].address), parse_ipv6("ff05::2")],
)
def test_multicast_goes_up(case: Case, dst: bytes) -> None:
    case.run(DOWN1, data("h1", dst, dst_mac=multicast_mac(dst)))
    case.run(DOWN1, data("h1", dst))  # IPv6 multicast to a unicast MAC: still fan-out


def test_frames_the_engine_drops_go_up(case: Case) -> None:
    h1, peer = HOSTS["h1"], HOSTS["peer"]
    case.run(DOWN1, data("h1", "h2", dst_mac=bytes.fromhex("02aabbccddee")))  # not for us
    # From the ingress's own MAC, and from the egress's (our own frames, looped back).
    case.run(DOWN1, _packet(h1.address, peer.address, src_mac=MACS[DOWN1], dst_mac=MACS[DOWN1]))
    case.run(UP, _packet(peer.address, h1.address, src_mac=MACS[DOWN1], dst_mac=MACS[UP]))
    case.run(DOWN1, data("h1", bytes(16)))  # to ::
    case.run(DOWN1, _packet(parse_ipv6("ff02::1"), peer.address, src_mac=h1.mac,
                            dst_mac=MACS[DOWN1]))  # fmt: skip
    case.run(DOWN1, data("h1", "h2", payload_length=200))  # truncated
    own = next(iter(case.topology.interfaces[DOWN1].addresses))
    case.run(DOWN1, data("h1", own))  # the member's own address
    bad_version = bytearray(data("h1", "h2"))
    bad_version[14] = 0x40
    case.run(DOWN1, bytes(bad_version))
    # (A frame shorter than its IPv6 header cannot be test-run: the kernel refuses it.)


def test_not_ipv6_goes_up(case: Case) -> None:
    arp = MACS[DOWN1] + HOSTS["h1"].mac + b"\x08\x06" + bytes(46)
    case.run(DOWN1, arp)


def test_members_that_do_not_forward_go_up(case: Case) -> None:
    case.topology.detect_loop(DOWN1, case.now)
    case.run(DOWN1, data("h1", "h2"))
    case.run(UP, data("peer", "h1"))  # its guests are not reached through the kernel


def test_unknown_ingress_goes_up(case: Case) -> None:
    case.run("eth9", data("h1", "h2"))


def test_what_the_kernel_leaves_to_the_workers_though_the_engine_forwards_it(
    case: Case,
) -> None:
    """Deliberately conservative: the workers forward these (the engine does), slower."""
    case.program()
    engine = Engine(case.topology, case.neighbors)
    padded = data("h1", "h2", payload=b"u" * 4) + bytes(8)  # Ethernet padding
    hop_by_hop_jumbo = bytes((17, 0, 0xC2, 4)) + (70000).to_bytes(4, "big")
    jumbo = data("h1", "h2", nh=0, payload=hop_by_hop_jumbo + b"u" * 16, payload_length=0)
    for frame in (padded, jumbo):
        actions = engine.handle_frame(DOWN1, frame, case.now)
        assert any(isinstance(a, Transmit) and a.interface == DOWN2 for a in actions)
        verdict, out = case.tc.test_run(frame, IFINDEX[DOWN1])
        assert (verdict, out) == (bpfload.TC_ACT_OK, frame)


def test_a_third_members_mac_as_source_goes_up_for_an_owned_address(case: Case) -> None:
    """h1's address from the MAC of another member: not h1's MAC, so up (the owners map)."""
    h1, peer = HOSTS["h1"], HOSTS["peer"]
    case.run(DOWN1, _packet(h1.address, peer.address, src_mac=MACS[DOWN2], dst_mac=MACS[DOWN1]))


def test_a_third_members_mac_with_a_new_address_is_forwarded_though_the_engine_drops_it(
    case: Case,
) -> None:
    """The one known gap: the maps hold no set of our own MACs, so a frame from the MAC
    of a member that is neither its ingress nor its egress (a guest spoofing it: our
    own frames never come back addressed to a member's MAC), with a source address
    nobody owns yet, is forwarded.  The nft fast path forwards it too."""
    case.program()
    fresh = bytes.fromhex("20010db8000100000000000000000077")
    frame = _packet(fresh, HOSTS["peer"].address, src_mac=MACS[DOWN2], dst_mac=MACS[DOWN1])
    actions = Engine(case.topology, case.neighbors).handle_frame(DOWN1, frame, case.now)
    assert not any(isinstance(a, Transmit) for a in actions)
    assert case.tc.test_run(frame, IFINDEX[DOWN1])[0] == bpfload.TC_ACT_REDIRECT
