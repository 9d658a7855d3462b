"""The tc program loads (the verifier accepts it), its maps have the layout the
supervisor packs, and a crafted frame runs through it (BPF_PROG_TEST_RUN, no
namespace).  The engine-held cases are in test_tc_oracle.py, the NS responder's in
test_tc_answers.py."""

from __future__ import annotations

import ctypes
import ipaddress
import secrets
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from bpfstate import MEMBER, MEMBER_ENABLED, PREFIX_KEY, ROUTE, ROUTE_KEY

from portier.supervisor import bpfload

# Root only (tests/conftest.py gates the bpf layer); a missing clang fails the compile loudly.

IN_IF, OUT_IF, GROUP = 900011, 900012, 1
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


def _member(mac: bytes = PROXY_IN_MAC) -> bytes:
    return MEMBER.pack(GROUP, MEMBER_ENABLED, mac, bytes(16))


@pytest.fixture(scope="module")
def tc(tmp_path_factory: pytest.TempPathFactory) -> bpfload.TcObject:
    obj = bpfload.compile_object(Path(tmp_path_factory.mktemp("bpf")) / "portier_tc.o")
    loaded = bpfload.TcObject(obj)
    loaded.update("members", struct.pack("I", IN_IF), _member())
    key = ROUTE_KEY.pack(GROUP, DST.packed)
    loaded.update("routes", key, ROUTE.pack(OUT_IF, 1500, NEIGH_MAC, OUT_MAC, 0, 0, 0))
    yield loaded
    loaded.close()


@pytest.mark.parametrize(
    ("name", "key_size", "value_size", "entries"),
    [
        ("members", 4, MEMBER.size, 1024),
        ("routes", ROUTE_KEY.size, ROUTE.size, 65536),
        ("owners", ROUTE_KEY.size, 12, 65536),
        ("onlink", PREFIX_KEY.size, 1, 1024),
        ("liveness", 4, 8, 1),
        ("answered", 4, 8, 1),
        ("forwarded", 4, 8, 1),
    ],
)
def test_maps_have_the_layout_the_supervisor_packs(
    tc: bpfload.TcObject, name: str, key_size: int, value_size: int, entries: int
) -> None:
    lib = ctypes.CDLL(tc._lib._name)
    for call in ("key_size", "value_size", "max_entries"):
        getattr(lib, f"bpf_map__{call}").argtypes = [ctypes.c_void_p]
        getattr(lib, f"bpf_map__{call}").restype = ctypes.c_uint32
    lib.bpf_object__find_map_by_name.restype = ctypes.c_void_p
    lib.bpf_object__find_map_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    found = lib.bpf_object__find_map_by_name(tc._obj, name.encode())
    assert found
    sizes = [getattr(lib, f"bpf_map__{call}")(found) for call in ("key_size", "value_size")]
    assert (*sizes, lib.bpf_map__max_entries(found)) == (key_size, value_size, entries)


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
        (_frame(nh=58, payload=b"\x87" + bytes(31)), IN_IF),  # ND goes to the workers
        (_frame(dmac=bytes.fromhex("333300000001")), IN_IF),  # multicast
        (_frame(), 99),  # not a member
        (_frame(dmac=OUT_MAC), OUT_IF),  # neighbor on the ingress link itself
        (_frame(payload=b"x" * 1500), IN_IF),  # too big for the egress
        (PROXY_IN_MAC + SRC_MAC + b"\x08\x06" + b"\x00" * 46, IN_IF),  # not IPv6
    ],
)
def test_everything_else_passes_up_unchanged(
    tc: bpfload.TcObject, frame: bytes, ifindex: int
) -> None:
    if ifindex == OUT_IF:
        tc.update("members", struct.pack("I", OUT_IF), _member(OUT_MAC))
    verdict, out = tc.test_run(frame, ifindex)
    assert verdict == bpfload.TC_ACT_OK
    assert out == frame


def test_sweeping_interfaces_without_our_filter_is_silent() -> None:
    """Start-up takes Portier's filter off every interface; where there is none (no clsact
    at all, most of them), libbpf must not print the kernel's refusal each time."""
    namespace = f"ptsweep{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(
            ["ip", "-n", namespace, "link", "add", "m1", "type", "veth", "peer", "name", "p1"],
            check=True,
        )
        sweep = (
            "from portier.supervisor.bpfpath import BpfPath;"
            "from portier.supervisor import tchook;"
            "print(BpfPath.clean_up_everywhere(), tchook.attached(1))"
        )
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", sweep],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "None"] and result.stderr == "", result
