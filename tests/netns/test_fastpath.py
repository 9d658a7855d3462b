"""The nftables fast path on real kernel hosts: what it forwards, and what it leaves."""

import ipaddress
import json
import sys

import pytest
from fastlab import NFT, forwarding_lab, hop_limits_arriving, settled_counter
from lab import ROUTER_ADDRESS, Lab, wait_for
from labdaemon import Daemon
from peers import PEERS

from portier.supervisor.fastpath import neighbor_chain


def ruleset(lab: Lab) -> str:
    return lab.ns(lab.proxy, "nft", "list", "ruleset").stdout


def wait_programmed(lab: Lab, address: str) -> str:
    chain = neighbor_chain("lan", ipaddress.IPv6Address(address).packed)
    wait_for(lambda: f"chain {chain}" in ruleset(lab), 5, f"{address} in the kernel")
    return chain


@pytest.fixture
def fast(make_lab):
    return forwarding_lab(make_lab)


def test_unicast_goes_through_the_kernel_not_the_workers(fast):
    lab, daemon, (address1, _) = fast
    wait_programmed(lab, address1)
    before_worker = settled_counter(daemon, "up0", "rx_data")
    before_kernel = daemon.call("fastpath", "--check")["kernel_packets"]
    assert lab.ping(lab.router, address1, count=50, extra=("-i", "0.01")).returncode == 0
    after = daemon.call("fastpath", "--check")
    assert after["kernel_packets"] - before_kernel >= 100  # requests and replies
    assert settled_counter(daemon, "up0", "rx_data") - before_worker < 5
    assert hop_limits_arriving(lab, 37) == [37, 37, 37]  # the guest's, untouched
    # ND still goes through the workers, rewritten.
    up0_mac = lab.ns(lab.proxy, "cat", "/sys/class/net/up0/address").stdout.strip()
    resolved = lab.ns(lab.router, "ndisc6", "-1", "-w", "1000", address1, "r0")
    assert f"Target link-layer address: {up0_mac.upper()}" in resolved.stdout


def test_a_loop_disabled_member_is_cut_off_at_once(fast):
    lab, daemon, (_, address2) = fast
    chain = wait_programmed(lab, address2)
    lab.wait_link_local(lab.guest_list[1].name)
    lab.ns(lab.guest_list[1].name, sys.executable, PEERS, "ra", "eth0", "00")
    wait_for(
        lambda: daemon.call("status")["disabled"] == {"vm2": ["loop_detected"]},
        10,
        "vm2 loop-disabled",
    )
    rules = ruleset(lab)
    assert chain not in rules and 'device "vm2"' not in rules
    assert lab.ping(lab.router, address2, count=2, timeout_s=1).returncode != 0
    daemon.call("enable", "vm2")
    wait_for(lambda: lab.ping(lab.router, address2).returncode == 0, 10, "vm2 back")


def test_a_removed_member_leaves_the_kernel(fast):
    lab, daemon, (address1, _) = fast
    daemon.call("remove", "vm1")
    rules = ruleset(lab)
    assert 'device "vm1"' not in rules and 'fwd to "vm1"' not in rules
    assert lab.ping(lab.router, address1, count=2, timeout_s=1).returncode != 0


def test_a_recreated_interface_is_reprogrammed(fast):
    lab, daemon, _ = fast
    guest = lab.guest_list[0]
    lab.recreate_guest_link(guest)
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address).returncode == 0
    wait_programmed(lab, address)
    before = daemon.call("fastpath", "--check")["kernel_packets"]
    assert lab.ping(lab.router, address, count=20, extra=("-i", "0.01")).returncode == 0
    # Through the kernel, with the new ifindex: a stale `fwd to` would blackhole these.
    assert daemon.call("fastpath", "--check")["kernel_packets"] - before >= 40


def test_drift_is_found_and_repaired(fast):
    lab, daemon, (address1, _) = fast
    wait_programmed(lab, address1)
    map_name = "g_" + b"lan".hex()
    lab.ns(
        lab.proxy, "nft", "delete", "element", "netdev", "portier", map_name, f"{{ {address1} }}"
    )
    result = daemon.call("fastpath", "--check")
    assert result["drift"] >= 1 and result["repairs"] >= 1
    elements = json.loads(
        lab.ns(lab.proxy, "nft", "-j", "list", "map", "netdev", "portier", map_name).stdout
    )
    listed = {
        str(e[0])
        for item in elements["nftables"]
        if "map" in item
        for e in item["map"].get("elem", [])
    }
    assert address1 in listed


def test_stop_leaves_nothing_and_start_cleans_up(make_lab):
    lab = make_lab(guests=1)
    # What a crashed run might have left behind.
    lab.ns(lab.proxy, "nft", "add", "table", "netdev", "portier")
    lab.ns(lab.proxy, "nft", "add", "chain", "netdev", "portier", "leftover")
    daemon = Daemon(lab, extra=NFT).start()
    guest = lab.guest_list[0]
    lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert "leftover" not in ruleset(lab)
    wait_for(lambda: "table netdev portier" in ruleset(lab), 5, "the fast path programmed")
    assert daemon.stop() == 0, daemon.log_tail()
    assert "portier" not in ruleset(lab)


def test_without_nft_the_workers_forward_everything(make_lab):
    lab = make_lab(guests=1)
    daemon = Daemon(lab, extra=NFT).start(launcher=["env", "PATH=/nonexistent"])
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address, count=3).returncode == 0
    state = daemon.call("fastpath")
    assert not state["active"] and state["reason"] == "nft not found"
    assert "portier" not in ruleset(lab)
    off = make_lab(guests=1)
    switched = Daemon(off, extra="[fastpath]\nenabled = false").start()
    assert switched.call("fastpath")["reason"] == "disabled by configuration"
    assert "fast path off" in switched.ctl("status", json_output=False).stdout
