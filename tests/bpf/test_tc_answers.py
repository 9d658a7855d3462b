"""The tc program's NS responder, held to the Python early answer (portier/answers.py).

The NA goes out with bpf_clone_redirect, which BPF_PROG_TEST_RUN really performs when
the skb sits on a real device.  So these tests make a private network namespace with a
veth pair (IPv6 off, so that nothing else speaks on it), run the program as if the NS
arrived on one end (the ingress member), and capture what comes out of the other end
with a packet socket.  The namespace goes when the module is done.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
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
    ns,
    set_liveness,
)

from portier.addresses import ALL_NODES, multicast_mac, solicited_node
from portier.answers import ANSWER_FRESH_S, EarlyAnswers, build_answer_table
from portier.engine import Engine, Transmit
from portier.fairshare import MEMBER_WORK_BURST, MEMBER_WORK_PER_S
from portier.frame import NH_ICMPV6, IPv6Header, build_frame
from portier.ndmsg import LinkLayerAddressOption, NeighborSolicitation, OptionType, encode_nd
from portier.supervisor import bpfload

CAPTURE_WAIT_S = 1.0  # an NA that is sent arrives within microseconds
SILENCE_WAIT_S = 0.1  # how long "nothing was sent" is listened for


def _is_na(frame: bytes) -> bool:
    return (
        len(frame) > 54
        and frame[12:14] == b"\x86\xdd"
        and frame[20] == NH_ICMPV6
        and frame[54] == 136
    )


@dataclass
class Link:
    """pta is the ingress member; what the program sends out of it arrives on ptb."""

    space: Namespace
    ingress: int
    capture: socket.socket

    def entered(self) -> contextlib.AbstractContextManager[None]:
        return self.space.entered()


@pytest.fixture(scope="module")
def netns() -> Iterator[Link]:
    space = Namespace("a", [("pta", "ptb")])
    try:
        space.create()
        yield Link(space, space.ifindex("pta"), space.packet_socket("ptb"))
    finally:
        space.destroy()


@pytest.fixture(scope="module")
def tc_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bpfload.compile_object(Path(tmp_path_factory.mktemp("bpf")) / "portier_tc.o")


class Responder:
    """One state for the program and for the Python early answer; dn1 is the veth."""

    def __init__(self, obj: Path, netns: Link) -> None:
        self.netns = netns
        self.now = time.monotonic()
        self.ifindex = {UP: 900021, DOWN1: netns.ingress, DOWN2: 900023}
        self.topology, self.neighbors = build_state(self.ifindex, self.now)
        self.tc = bpfload.TcObject(obj)
        self.live_until: float | None = None

    def program(self) -> None:
        fill_maps(
            self.tc,
            self.topology,
            self.neighbors,
            self.now,
            {GROUP: GROUP_NUMBER},
            live_until=self.live_until,
        )

    def python_answer(self, frame: bytes) -> bytes | None:
        """What the worker's answer thread sends, checked against the engine's own answer
        where the engine answers (it does not when it refuses the NS's source claim)."""
        early = EarlyAnswers()
        early.publish(build_answer_table(self.topology, self.neighbors, DOWN1))
        answer = early.answer(frame, self.now)
        engine = Engine(self.topology, self.neighbors)
        actions = engine.handle_frame(DOWN1, frame, self.now)
        back = [a.frame for a in actions if isinstance(a, Transmit) and a.interface == DOWN1]
        if back:
            assert back == [answer]
        return answer

    def ask(self, frame: bytes) -> bytes | None:
        """Run the NS through the program; the NA it sent (None if none).  The NS itself
        must always come out unchanged, for the workers."""
        self.program()
        drain(self.netns.capture)
        with self.netns.entered():
            verdict, out = self.tc.test_run(frame, self.netns.ingress, ifindex=self.netns.ingress)
        assert verdict == bpfload.TC_ACT_OK
        assert out == frame
        python = self.python_answer(frame)
        wait = CAPTURE_WAIT_S if python is not None else SILENCE_WAIT_S
        sent = frames(self.netns.capture, wait, _is_na)
        assert len(sent) <= 1
        return sent[0] if sent else None

    def close(self) -> None:
        self.tc.close()


@pytest.fixture
def responder(tc_object: Path, netns: Link) -> Iterator[Responder]:
    made = Responder(tc_object, netns)
    yield made
    made.close()


def solicitation(
    asker: str = "h1",
    target: str = "h2",
    *,
    src: bytes | None = None,
    dst: bytes | None = None,
    slla: bytes | None = None,
    options: tuple | None = None,
    src_mac: bytes | None = None,
    dst_mac: bytes | None = None,
    hop_limit: int = 255,
    checksum_delta: int = 0,
) -> bytes:
    """A multicast NS from guest `asker` for `target` as it arrives on the asker's member."""
    host = HOSTS[asker]
    address = HOSTS[target].address
    source = host.address if src is None else src
    group = solicited_node(address) if dst is None else dst
    if options is None:
        options = (LinkLayerAddressOption(OptionType.SOURCE_LINK_LAYER, slla or host.mac),)
    icmp = bytearray(encode_nd(NeighborSolicitation(address, options), source, group))
    icmp[2:4] = ((int.from_bytes(icmp[2:4], "big") + checksum_delta) & 0xFFFF).to_bytes(2, "big")
    header = IPv6Header(source, group, NH_ICMPV6, hop_limit, len(icmp), traffic_class=0x20)
    return build_frame(
        multicast_mac(group) if dst_mac is None else dst_mac,
        host.mac if src_mac is None else src_mac,
        header,
        bytes(icmp),
    )


# --- answered ------------------------------------------------------------------------


def test_ns_is_answered_with_the_python_answer_and_still_goes_up(responder: Responder) -> None:
    frame = solicitation()
    assert len(frame) == 86
    na = responder.ask(frame)
    python = responder.python_answer(frame)
    assert python is not None
    assert na == python  # byte for byte: MACs, addresses, flags S, TLLA, checksum
    assert na[0:6] == HOSTS["h1"].mac and na[6:12] == MACS[DOWN1]
    assert na[58] == 0x40  # solicited, override clear, not a router
    assert bpfstate_answered(responder) == 1


def test_router_target_gets_the_r_flag(responder: Responder) -> None:
    frame = solicitation(target="router")
    na = responder.ask(frame)
    assert na is not None and na == responder.python_answer(frame)
    assert na[58] == 0xC0


def test_answer_goes_to_the_slla_when_it_is_unicast_else_to_the_ethernet_source(
    responder: Responder,
) -> None:
    other = bytes.fromhex("0a00000000aa")
    for slla, expected in ((other, other), (bytes.fromhex("333300000001"), HOSTS["h1"].mac)):
        frame = solicitation(slla=slla)
        na = responder.ask(frame)
        assert na is not None and na == responder.python_answer(frame)
        assert na[0:6] == expected


# --- not answered --------------------------------------------------------------------


def _not_answered(responder: Responder, frame: bytes) -> None:
    assert responder.python_answer(frame) is None
    assert responder.ask(frame) is None
    assert bpfstate_answered(responder) == 0


def test_neighbor_under_an_owner_check_is_never_answered(responder: Responder) -> None:
    """ROUTE_CHECKING set: whose the address is is open, so neither answers; once the
    check settles in the owner's favour both answer again."""
    entry = responder.neighbors.get(GROUP, HOSTS["h2"].address)
    assert entry is not None
    entry.claimant, entry.claimant_mac, entry.check_until = DOWN1, HOSTS["h1"].mac, 1e12
    _not_answered(responder, solicitation())
    entry.claimant, entry.claimant_mac, entry.check_until = "", b"", 0.0
    frame = solicitation()
    na = responder.ask(frame)
    assert na is not None and na == responder.python_answer(frame)


def test_dad_probe_is_never_answered(responder: Responder) -> None:
    _not_answered(responder, solicitation(src=bytes(16), options=()))
    # nor the same probe shaped like an answerable NS (an SLLA makes it invalid too)
    _not_answered(responder, solicitation(src=bytes(16)))


@pytest.mark.parametrize("live", ["never", "past"])
def test_stale_liveness_is_never_answered(responder: Responder, live: str) -> None:
    frame = solicitation()
    responder.program()
    set_liveness(responder.tc, 0 if live == "never" else ns(responder.now - 1.0))
    drain(responder.netns.capture)
    with responder.netns.entered():
        verdict, out = responder.tc.test_run(
            frame, responder.netns.ingress, ifindex=responder.netns.ingress
        )
    assert (verdict, out) == (bpfload.TC_ACT_OK, frame)
    assert frames(responder.netns.capture, SILENCE_WAIT_S, _is_na) == []
    assert bpfstate_answered(responder) == 0
    responder.live_until = responder.now - 1.0  # the same through fill_maps
    assert responder.ask(frame) is None


def test_stale_neighbor_is_never_answered(responder: Responder) -> None:
    entry = responder.neighbors.get(GROUP, HOSTS["h2"].address)
    assert entry is not None
    entry.last_seen = responder.now - ANSWER_FRESH_S - 1.0
    _not_answered(responder, solicitation())


def test_target_on_the_ingress_itself_or_unknown_is_not_answered(responder: Responder) -> None:
    _not_answered(responder, solicitation(target="h3"))  # h3 lives behind dn1 too
    responder.neighbors.remove(GROUP, HOSTS["h2"].address)
    _not_answered(responder, solicitation())


def test_invalid_or_foreign_ns_is_not_answered(responder: Responder) -> None:
    _not_answered(responder, solicitation(checksum_delta=1))
    _not_answered(responder, solicitation(hop_limit=64))
    _not_answered(responder, solicitation(src_mac=MACS[DOWN1]))  # our own echo
    _not_answered(responder, solicitation(src_mac=MACS[DOWN2]))  # the target's member's
    _not_answered(responder, solicitation(dst_mac=bytes.fromhex("0a00000000ee")))  # not to us


def test_disabled_ingress_answers_nothing(responder: Responder) -> None:
    responder.topology.detect_loop(DOWN1, responder.now)
    _not_answered(responder, solicitation())


def test_ns_shapes_left_to_the_workers_early_answer(responder: Responder) -> None:
    """Python answers these too; the kernel answers only the one 86-byte shape, so these
    go up unanswered and the workers answer them."""
    for frame in (
        solicitation(options=()),  # no SLLA
        solicitation(dst=ALL_NODES),  # not to a solicited-node group
    ):
        assert responder.python_answer(frame) is not None
        assert responder.ask(frame) is None
    assert bpfstate_answered(responder) == 0


def test_answered_counts_exactly_the_answers(responder: Responder) -> None:
    frames = [
        solicitation(),
        solicitation(src=bytes(16), options=()),
        solicitation(target="router"),
        solicitation(checksum_delta=3),
        solicitation(target="h3"),
        solicitation(asker="h3"),
    ]
    sent = python = 0
    for frame in frames:
        sent += responder.ask(frame) is not None
        python += responder.python_answer(frame) is not None
    assert sent == python == bpfstate_answered(responder) == 3


def test_answers_are_paced_per_member(responder: Responder) -> None:
    """Fair sharing in the kernel: one member's NS get MEMBER_WORK_BURST answers at once,
    then MEMBER_WORK_PER_S; what is held back is counted, and every NS still goes up."""
    responder.program()
    frame = solicitation()
    count = MEMBER_WORK_BURST + 30
    ingress = responder.netns.ingress
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # the buckets are per CPU: stay on one
    try:
        with responder.netns.entered():
            started = time.monotonic()
            for _ in range(count):
                verdict, out = responder.tc.test_run(frame, ingress, ifindex=ingress)
                assert verdict == bpfload.TC_ACT_OK and out == frame
            elapsed = time.monotonic() - started
    finally:
        os.sched_setaffinity(0, cpus)
    sent, limited = answered(responder.tc), answered(responder.tc, "answers_limited")
    assert sent + limited == count
    refilled = int(elapsed * MEMBER_WORK_PER_S) + 1
    assert MEMBER_WORK_BURST <= sent <= MEMBER_WORK_BURST + refilled, (sent, elapsed)


def test_the_kernels_bucket_is_the_engines() -> None:
    """portier_tc.c repeats fairshare.py's two numbers: they must not drift apart."""
    source = bpfload.SOURCE.read_text()
    defined = dict(re.findall(r"#define (MEMBER_WORK_\w+) (\d+)", source))
    assert defined == {
        "MEMBER_WORK_PER_S": str(int(MEMBER_WORK_PER_S)),
        "MEMBER_WORK_BURST": str(MEMBER_WORK_BURST),
    }


def bpfstate_answered(responder: Responder) -> int:
    return answered(responder.tc)
