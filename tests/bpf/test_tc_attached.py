"""The tc program attached for real (clsact ingress on a veth in a private namespace):
what BPF_PROG_TEST_RUN cannot show.  A redirect leaves by the route's egress device,
a frame whose VLAN tag the kernel took off (skb->vlan_present, which PROG_TEST_RUN
cannot set) is never forwarded, and the NS answer goes back out of the ingress from
the real receive path.

pta is the ingress member (frames are sent into it from its peer ptb), ptc the egress
member (what leaves it is captured on ptd).  libbpf's bpf_tc_* calls attach it here;
the namespace, and the attachment with it, goes when the module is done.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bpfnetns import Namespace, drain, frames
from bpfstate import (
    DOWN1,
    DOWN2,
    GROUP,
    GROUP_NUMBER,
    HOSTS,
    MACS,
    UP,
    answered,
    build_state,
    fill_maps,
)

from portier.addresses import format_mac, multicast_mac, solicited_node
from portier.answers import EarlyAnswers, build_answer_table
from portier.frame import NH_ICMPV6, IPv6Header, build_frame
from portier.ndmsg import LinkLayerAddressOption, NeighborSolicitation, OptionType, encode_nd
from portier.supervisor import bpfload
from portier.supervisor.tchook import attach

ARRIVE_WAIT_S = 1.0
SILENCE_WAIT_S = 0.2


@dataclass
class Lab:
    space: Namespace
    tc: bpfload.TcObject
    ifindex: dict[str, int]
    now: float

    def __post_init__(self) -> None:
        self.inject = self.space.packet_socket("ptb")
        self.on_ingress = self.space.packet_socket("pta")
        self.out_of_egress = self.space.packet_socket("ptd")
        self.topology, self.neighbors = build_state(self.ifindex, self.now)
        fill_maps(self.tc, self.topology, self.neighbors, self.now, {GROUP: GROUP_NUMBER})

    def send(self, frame: bytes) -> None:
        for sock in (self.inject, self.on_ingress, self.out_of_egress):
            drain(sock)
        self.inject.send(frame)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    obj = bpfload.compile_object(Path(tmp_path_factory.mktemp("bpf")) / "portier_tc.o")
    space = Namespace("t", [("pta", "ptb"), ("ptc", "ptd")])
    tc = None
    try:
        space.create()
        for device, member in (("pta", DOWN1), ("ptc", DOWN2)):
            # the members' MACs, so that frames to them are the devices' own (PACKET_HOST)
            address = format_mac(MACS[member])
            set_mac = ["ip", "-n", space.name, "link", "set", device, "address", address]
            subprocess.run(set_mac, check=True, capture_output=True, timeout=10)
        tc = bpfload.TcObject(obj)
        ifindex = {UP: 900021, DOWN1: space.ifindex("pta"), DOWN2: space.ifindex("ptc")}
        with space.entered():
            attach(ifindex[DOWN1], tc.prog_fd)
        yield Lab(space, tc, ifindex, time.monotonic())
    finally:
        space.destroy()
        if tc is not None:
            tc.close()


def _data(payload: bytes = b"d" * 40) -> bytes:
    h1, h2 = HOSTS["h1"], HOSTS["h2"]
    header = IPv6Header(h1.address, h2.address, 17, 64, len(payload))
    return build_frame(MACS[DOWN1], h1.mac, header, payload)


def test_redirect_leaves_by_the_routes_egress(lab: Lab) -> None:
    frame = _data()
    lab.send(frame)
    out = frames(lab.out_of_egress, ARRIVE_WAIT_S, lambda f: f[12:] == frame[12:])
    assert out == [HOSTS["h2"].mac + MACS[DOWN2] + frame[12:]]


def test_vlan_tagged_frame_is_never_forwarded(lab: Lab) -> None:
    plain = _data(b"v" * 40)
    tagged = plain[:12] + b"\x81\x00\x00\x05" + plain[12:]
    lab.send(tagged)
    # It did arrive (taps see it before tc, the tag already in the skb's metadata) ...
    assert frames(lab.on_ingress, ARRIVE_WAIT_S, lambda f: f.endswith(plain[14:]))
    # ... and nothing of it left by the egress.
    assert frames(lab.out_of_egress, SILENCE_WAIT_S, lambda f: f.endswith(plain[14:])) == []
    lab.send(plain)  # the same frame untagged does go (the check above is the tag's)
    assert frames(lab.out_of_egress, ARRIVE_WAIT_S, lambda f: f.endswith(plain[14:]))
    assert answered(lab.tc, "tagged") == 1  # the tag the device took off, counted


def test_ns_answered_on_the_real_receive_path(lab: Lab) -> None:
    h1, h2 = HOSTS["h1"], HOSTS["h2"]
    group = solicited_node(h2.address)
    options = (LinkLayerAddressOption(OptionType.SOURCE_LINK_LAYER, h1.mac),)
    icmp = encode_nd(NeighborSolicitation(h2.address, options), h1.address, group)
    header = IPv6Header(h1.address, group, NH_ICMPV6, 255, len(icmp))
    ns = build_frame(multicast_mac(group), h1.mac, header, icmp)
    early = EarlyAnswers()
    early.publish(build_answer_table(lab.topology, lab.neighbors, DOWN1))
    expected = early.answer(ns, lab.now)
    assert expected is not None
    before = answered(lab.tc)
    lab.send(ns)
    # The NA goes back out of the ingress, so it arrives where the NS came from.
    assert frames(lab.inject, ARRIVE_WAIT_S, lambda f: f[12:] == expected[12:]) == [expected]
    assert answered(lab.tc) == before + 1
    assert frames(lab.out_of_egress, SILENCE_WAIT_S, lambda f: f[12:14] == b"\x86\xdd") == []
