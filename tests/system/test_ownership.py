"""Guests that belong to different people: address ownership and VLAN isolation, end to end.

Each test builds its own lab (router with radvd, the real portierd, guests on SLAAC).
The attacker's frames are crafted with scapy and sent from a packet socket in the
attacker's own namespace; everything else is the real kernel: ping, SLAAC, DAD,
`ip addr`, portierctl and the metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lab import PREFIX_NET, ROUTER_ADDRESS, ROUTER_LL, Lab, wait_for
from labdaemon import Daemon
from peers import PEERS
from scapy.layers.inet6 import (
    UDP,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from portier.addresses import parse_ipv6


def mac_of(lab: Lab, namespace: str, interface: str) -> str:
    return json.loads(lab.ns(namespace, "ip", "-j", "link", "show", interface).stdout)[0]["address"]


def send(lab: Lab, namespace: str, frame, interface: str = "eth0") -> None:
    lab.ns(namespace, sys.executable, PEERS, "rawsend", interface, bytes(frame).hex())


def spoofed_na(attacker_mac: str, target: str):
    """An unsolicited NA, O=1, naming `target` with the attacker's own MAC."""
    return (
        Ether(src=attacker_mac, dst="33:33:00:00:00:01")
        / IPv6(src=target, dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=attacker_mac)
    )


def owner_of(daemon: Daemon, address: str) -> dict | None:
    rows = daemon.call("neighbors")
    assert isinstance(rows, list)
    return next((row for row in rows if row["address"] == address), None)


def claims(daemon: Daemon, interface: str, outcome: str) -> float:
    code = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:9470/metrics').read().decode())"
    )
    text = daemon.lab.ns(daemon.lab.proxy, sys.executable, "-c", code).stdout
    wanted = f'portier_claims_total{{interface="{interface}",outcome="{outcome}"}}'
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.rpartition(" ")[2])
    return 0.0


def watch_frames(lab: Lab, namespace: str, seconds: float, *markers: bytes) -> subprocess.Popen:
    watcher = lab.spawn(
        namespace,
        sys.executable,
        PEERS,
        "framewatch",
        "eth0",
        str(seconds),
        *(m.hex() for m in markers),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None and watcher.stdout.readline().strip() == "listening"
    return watcher


def seen_markers(watcher: subprocess.Popen) -> set[str]:
    output, _ = watcher.communicate(timeout=60)
    return {json.loads(line)["marker"] for line in output.splitlines()}


@pytest.fixture
def lab(make_lab) -> Lab:
    return make_lab(guests=2)


@pytest.fixture
def daemon(lab) -> Daemon:
    daemon = Daemon(lab).start()
    wait_for(lambda: daemon.call("status")["forwarding"] == 3, 10, "every member forwarding")
    return daemon


@pytest.fixture
def guests(lab, daemon) -> dict[str, str]:
    """Both guests on SLAAC, known to the proxy and reachable from the router."""
    addresses = {}
    for guest in lab.guest_list:
        addresses[guest.name] = lab.wait_slaac(guest)
        lab.wait_ping(lab.router, addresses[guest.name])
    return addresses


def test_tagged_ra_ns_and_data_on_the_upstream_reach_no_guest(lab, daemon, guests):
    vm1 = lab.guest_list[0]
    wait_for(lambda: daemon.call("fastpath")["neighbors"] >= 2, 10, "guests in the fast path")
    router_mac = mac_of(lab, lab.router, "r0")
    up0_mac = mac_of(lab, lab.proxy, "up0")
    tagged_prefix = f"{PREFIX_NET[:-1]}2::"
    ns_marker, data_marker, done_marker = (
        f"{PREFIX_NET}::dead:1",
        b"tagged-data-6620",
        f"{PREFIX_NET}::dead:2",
    )
    markers = [
        parse_ipv6(tagged_prefix),
        parse_ipv6(ns_marker),
        data_marker,
        parse_ipv6(done_marker),
    ]
    watchers = {g.name: watch_frames(lab, g.name, 15, *markers) for g in lab.guest_list}
    ra = (
        ICMPv6ND_RA(routerlifetime=1800)
        / ICMPv6NDOptSrcLLAddr(lladdr=router_mac)
        / ICMPv6NDOptPrefixInfo(prefix=tagged_prefix, prefixlen=64, L=1, A=1)
    )
    spoofer = f"{PREFIX_NET}::bad"
    # A VLAN the host has no sub-interface for; the same behind a priority tag (VLAN 0).
    for tag in (Dot1Q(vlan=100), Dot1Q(vlan=0) / Dot1Q(vlan=100)):
        send(
            lab,
            lab.router,
            Ether(src=router_mac, dst="33:33:00:00:00:01")
            / tag
            / IPv6(src=ROUTER_LL, dst="ff02::1", hlim=255)
            / ra,
            "r0",
        )
        send(
            lab,
            lab.router,
            Ether(src=router_mac, dst="33:33:ff:ad:00:01")
            / tag
            / IPv6(src=spoofer, dst="ff02::1:ffad:1", hlim=255)
            / ICMPv6ND_NS(tgt=ns_marker)
            / ICMPv6NDOptSrcLLAddr(lladdr=router_mac),
            "r0",
        )
        send(
            lab,
            lab.router,
            Ether(src=router_mac, dst=up0_mac)
            / tag
            / IPv6(src=ROUTER_ADDRESS, dst=guests[vm1.name], hlim=64)
            / UDP(sport=4389, dport=4389)
            / Raw(data_marker),
            "r0",
        )
    # Untagged, the same NS goes through: once every guest saw it, the tagged ones had
    # their chance.
    send(
        lab,
        lab.router,
        Ether(src=router_mac, dst="33:33:ff:ad:00:02")
        / IPv6(src=ROUTER_ADDRESS, dst="ff02::1:ffad:2", hlim=255)
        / ICMPv6ND_NS(tgt=done_marker)
        / ICMPv6NDOptSrcLLAddr(lladdr=router_mac),
        "r0",
    )
    for name, watcher in watchers.items():
        assert seen_markers(watcher) == {parse_ipv6(done_marker).hex()}, name
    for guest in lab.guest_list:
        addresses = lab.usable_addresses(guest.name, "eth0", "global")
        assert not [a for a in addresses if a.startswith(tagged_prefix[:-1])], addresses
    assert owner_of(daemon, spoofer) is None, "a tagged frame taught the cache"
    assert daemon.call("status")["forwarding"] == 3, "a tagged frame disabled a member"
