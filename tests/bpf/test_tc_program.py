"""The tc program, run through BPF_PROG_TEST_RUN (no namespace): crafted frames
in, verdict and bytes out."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from portier.supervisor import bpfload

# Root only (tests/conftest.py gates the bpf layer); a missing clang fails the compile loudly.

IN_IF, OUT_IF, GROUP = 11, 12, 1
DST = ipaddress.IPv6Address("2001:db8::20")
NEIGH_MAC = bytes.fromhex("020000000020")
OUT_MAC = bytes.fromhex("0200000000ee")
PROXY_IN_MAC = bytes.fromhex("0200000000aa")
SRC_MAC = bytes.fromhex("020000000010")


def _frame(
    dst: ipaddress.IPv6Address = DST,
    nh: int = 17,
    hlim: int = 64,
    dmac: bytes = PROXY_IN_MAC,
    payload: bytes = b"x" * 32,
) -> bytes:
    ip6 = struct.pack("!IHBB", 6 << 28, len(payload), nh, hlim)
    ip6 += ipaddress.IPv6Address("2001:db8::10").packed + dst.packed
    return dmac + SRC_MAC + b"\x86\xdd" + ip6 + payload


@pytest.fixture(scope="module")
def tc(tmp_path_factory: pytest.TempPathFactory) -> bpfload.TcObject:
    obj = bpfload.compile_object(Path(tmp_path_factory.mktemp("bpf")) / "portier_tc.o")
    loaded = bpfload.TcObject(obj)
    loaded.update("members", struct.pack("I", IN_IF), struct.pack("II", GROUP, 1))
    key = struct.pack("I", GROUP) + DST.packed
    loaded.update("routes", key, struct.pack("II", OUT_IF, 1500) + NEIGH_MAC + OUT_MAC)
    yield loaded
    loaded.close()


def test_learned_neighbor_is_redirected_with_both_macs_and_hop_limit_kept(
    tc: bpfload.TcObject,
) -> None:
    verdict, out = tc.test_run(_frame(), IN_IF)
    assert verdict == bpfload.TC_ACT_REDIRECT
    assert out[:6] == NEIGH_MAC and out[6:12] == OUT_MAC
    assert out[12:] == _frame()[12:]  # hop limit and payload untouched


@pytest.mark.parametrize(
    ("frame", "ifindex"),
    [
        (_frame(dst=ipaddress.IPv6Address("2001:db8::99")), IN_IF),  # miss
        (_frame(nh=58), IN_IF),  # ICMPv6 / ND goes to the workers
        (_frame(dmac=bytes.fromhex("333300000001")), IN_IF),  # multicast
        (_frame(), 99),  # not a member
        (_frame(), OUT_IF),  # neighbor on the ingress link itself
        (_frame(payload=b"x" * 1500), IN_IF),  # too big for the egress
        (PROXY_IN_MAC + SRC_MAC + b"\x08\x06" + b"\x00" * 46, IN_IF),  # not IPv6
    ],
)
def test_everything_else_passes_up_unchanged(
    tc: bpfload.TcObject, frame: bytes, ifindex: int
) -> None:
    if ifindex == OUT_IF:
        tc.update("members", struct.pack("I", OUT_IF), struct.pack("II", GROUP, 1))
    verdict, out = tc.test_run(frame, ifindex)
    assert verdict == bpfload.TC_ACT_OK
    assert out == frame
