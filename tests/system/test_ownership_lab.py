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
import time

import pytest
from lab import PREFIX_NET, ROUTER_ADDRESS, ROUTER_LL, Lab, wait_for
from labdaemon import Daemon
from peers import PEERS, seen_markers, watch_frames
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


def metric(daemon: Daemon, series: str) -> float:
    """One series' value from portierd's /metrics (0 when absent)."""
    return daemon.metrics().get(series, 0.0)


def claims(daemon: Daemon, interface: str, outcome: str) -> float:
    return metric(daemon, f'portier_claims_total{{interface="{interface}",outcome="{outcome}"}}')


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


def test_a_spoofed_na_for_a_guests_address_moves_nothing(lab, daemon, guests):
    vm1, vm2 = lab.guest_list
    target = guests[vm1.name]
    vm2_mac = mac_of(lab, vm2.name, "eth0")
    for _ in range(3):
        send(lab, vm2.name, spoofed_na(vm2_mac, target))
    wait_for(lambda: claims(daemon, "vm2", "refused") >= 1, 10, "vm1 answering the check")
    entry = owner_of(daemon, target)
    assert entry is not None and entry["interface"] == "vm1" and entry["owner"] == "owned"
    ping = lab.ping(lab.router, target, count=5, extra=("-i", "0.2"))
    assert " 0% packet loss" in ping.stdout, ping.stdout
    assert claims(daemon, "vm2", "moved") == 0


def test_a_spoofed_na_for_the_routers_addresses_moves_nothing(lab, daemon, guests):
    vm1, vm2 = lab.guest_list
    vm2_mac = mac_of(lab, vm2.name, "eth0")
    for address in (ROUTER_ADDRESS, ROUTER_LL):
        wait_for(lambda a=address: owner_of(daemon, a), 10, f"the proxy knowing {address}")
        for _ in range(3):
            send(lab, vm2.name, spoofed_na(vm2_mac, address))
    wait_for(lambda: claims(daemon, "vm2", "refused") >= 2, 10, "the router answering")
    for address in (ROUTER_ADDRESS, ROUTER_LL):
        entry = owner_of(daemon, address)
        assert entry is not None and entry["interface"] == "up0", entry
    for guest in (vm1, vm2):
        ping = lab.ping(guest.name, ROUTER_ADDRESS, count=3, extra=("-i", "0.2"))
        assert " 0% packet loss" in ping.stdout, (guest.name, ping.stdout)
        ping = lab.ping(guest.name, f"{ROUTER_LL}%eth0", count=1)
        assert ping.returncode == 0, (guest.name, ping.stdout)


def test_an_address_given_up_by_one_guest_moves_to_the_next_within_3_s(lab, daemon, guests):
    vm1, vm2 = lab.guest_list
    address = f"{PREFIX_NET}::6620"
    lab.ns(vm1.name, "ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
    lab.wait_ping(lab.router, address)
    assert owner_of(daemon, address)["interface"] == "vm1"
    lab.ns(vm1.name, "ip", "-6", "addr", "del", f"{address}/64", "dev", "eth0")
    started = time.monotonic()
    lab.ns(vm2.name, "ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0")  # with DAD
    wait_for(
        lambda: address in lab.usable_addresses(vm2.name, "eth0", "global"),
        10,
        "vm2's DAD (nobody defends the address)",
    )
    dad_done = time.monotonic() - started
    try:
        wait_for(
            lambda: lab.ping(lab.router, address, count=1, timeout_s=1).returncode == 0,
            max(0.5, 3.0 - (time.monotonic() - started)),
            "the router reaching the address behind vm2 within 3 s of vm2 taking it",
            interval=0.1,
        )
    except Exception:
        lab.wait_ping(lab.router, address, timeout=20)
        raise AssertionError(
            f"DAD done {dad_done:.2f} s, reachable {time.monotonic() - started:.2f} s"
            f"\n{daemon.log_tail(40)}"
        ) from None
    assert owner_of(daemon, address)["interface"] == "vm2"
    assert claims(daemon, "vm2", "moved") >= 1


@pytest.mark.parametrize("engine", ["bpf", "nftables"])
def test_a_spoofed_data_source_is_dropped_in_the_workers_and_the_fast_path(make_lab, engine):
    """Another guest's address, and a guest's own address from a MAC not its own, never
    reach the router, on either kernel path; the honest datagram does."""
    lab = make_lab(guests=2)
    daemon = Daemon(lab, extra=f'[fastpath]\nengine = "{engine}"\n').start()
    wait_for(lambda: daemon.call("status")["forwarding"] == 3, 10, "every member forwarding")
    vm1, vm2 = lab.guest_list
    guests = {}
    for guest in lab.guest_list:
        guests[guest.name] = lab.wait_slaac(guest)
        lab.wait_ping(lab.router, guests[guest.name])
    wait_for(lambda: daemon.call("fastpath")["neighbors"] >= 3, 10, "the fast path programmed")
    assert daemon.call("fastpath")["engine"] == engine
    vm2_mac = mac_of(lab, vm2.name, "eth0")
    port_mac = mac_of(lab, lab.proxy, vm2.port)
    spoofed, other_mac, honest = b"spoofed-source-6620", b"spoofed-mac-6620", b"honest-6620"
    watcher = watch_frames(lab, lab.router, 6, spoofed, other_mac, honest, interface="r0")

    def datagram(source: str, payload: bytes, mac: str = vm2_mac):
        return (
            Ether(src=mac, dst=port_mac)
            / IPv6(src=source, dst=ROUTER_ADDRESS, hlim=64)
            / UDP(sport=4389, dport=4389)
            / Raw(payload)
        )

    for _ in range(3):
        send(lab, vm2.name, datagram(guests[vm1.name], spoofed))
        send(lab, vm2.name, datagram(guests[vm2.name], other_mac, mac="02:00:00:00:be:ef"))
    send(lab, vm2.name, datagram(guests[vm2.name], honest))
    assert seen_markers(watcher) == {honest.hex()}
    wait_for(
        lambda: claims(daemon, "vm2", "source_invalid") + claims(daemon, "vm2", "refused") >= 2,
        10,
        "both spoofed sources counted",
    )
    assert owner_of(daemon, guests[vm1.name])["interface"] == "vm1"
    entry = owner_of(daemon, guests[vm2.name])
    assert entry["interface"] == "vm2" and entry["mac"] == vm2_mac, entry


def owned_addresses(daemon: Daemon, interface: str) -> float:
    return metric(daemon, f'portier_owned_addresses{{group="lan",interface="{interface}"}}')


def test_a_member_over_quota_claims_no_more_while_the_others_keep_resolving(make_lab):
    lab = make_lab(guests=2)
    daemon = Daemon(lab, extra="[neighbors]\nper_member_limit = 4\n").start()
    wait_for(lambda: daemon.call("status")["forwarding"] == 3, 10, "every member forwarding")
    vm1, vm2 = lab.guest_list
    for guest in (vm1, vm2):
        lab.wait_ping(lab.router, lab.wait_slaac(guest))
    extra = [f"{PREFIX_NET}::7:{n}" for n in range(1, 7)]
    for address in extra:
        lab.ns(vm2.name, "ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
        lab.ping(vm2.name, ROUTER_ADDRESS, count=1, timeout_s=1, extra=("-I", address))
    wait_for(lambda: claims(daemon, "vm2", "over_quota") >= 1, 10, "vm2's refused claims")
    assert owned_addresses(daemon, "vm2") == 4
    reachable = [a for a in extra if lab.ping(lab.router, a, count=1, timeout_s=1).returncode == 0]
    assert len(reachable) <= 2, "vm2 owns its link-local and SLAAC addresses and two of these"
    # vm1 still resolves new addresses of its own, both ways.
    fresh = f"{PREFIX_NET}::8:1"
    lab.ns(vm1.name, "ip", "-6", "addr", "add", f"{fresh}/64", "dev", "eth0", "nodad")
    lab.wait_ping(lab.router, fresh, timeout=10)
    assert lab.ping(vm1.name, ROUTER_ADDRESS, count=3, extra=("-i", "0.2")).returncode == 0
    assert owner_of(daemon, fresh)["interface"] == "vm1"


def test_one_guest_flooding_ns_starves_no_one(lab, daemon, guests):
    """vm2 floods NS for random targets at full speed for 10 s: vm1's pings to the router
    lose nothing and `portierctl status` answers within its 1 s timeout throughout."""
    vm1, vm2 = lab.guest_list
    lab.wait_link_local(vm2.name)
    flood = lab.spawn(
        vm2.name,
        sys.executable,
        PEERS,
        "nsflood",
        "eth0",
        "10",
        "5000000",
        stdout=subprocess.PIPE,
        text=True,
    )
    pinger = lab.spawn(
        vm1.name,
        "ping",
        "-6",
        "-n",
        "-c",
        "45",
        "-i",
        "0.2",
        "-W",
        "2",
        ROUTER_ADDRESS,
        stdout=subprocess.PIPE,
        text=True,
    )
    answers = []
    while flood.poll() is None and len(answers) < 40:
        started = time.monotonic()
        reply = daemon.ctl("--timeout", "1", "status")
        answers.append((reply.returncode, round(time.monotonic() - started, 3)))
        time.sleep(0.2)  # pacing the control requests, not synchronising anything
    sent = int(flood.communicate(timeout=30)[0].strip())
    ping_output, _ = pinger.communicate(timeout=60)
    assert sent > 10_000, f"the flood only sent {sent} NS"
    assert " 0% packet loss" in ping_output, ping_output
    assert answers and all(code == 0 for code, _ in answers), answers
    assert daemon.call("status")["forwarding"] == 3
