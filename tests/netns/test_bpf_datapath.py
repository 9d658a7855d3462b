"""The BPF data path on real kernel hosts: what it forwards, what it leaves, and its fallback."""

from __future__ import annotations

import pytest
from fastlab import forwarding_lab, hop_limits_arriving, settled_counter
from lab import ROUTER_ADDRESS, Lab, wait_for
from labdaemon import Daemon

BPF = '[fastpath]\nengine = "bpf"\n'


def filters(lab: Lab, interface: str) -> str:
    return lab.ns(lab.proxy, "tc", "filter", "show", "dev", interface, "ingress").stdout


def ours(lab: Lab, interface: str) -> bool:
    return "portier_ingress" in filters(lab, interface)


@pytest.fixture
def bpf(make_lab):
    return forwarding_lab(make_lab, BPF)


def test_unicast_goes_through_the_program_not_the_workers(bpf):
    lab, daemon, (address1, _) = bpf
    view = daemon.call("fastpath")
    assert view["engine"] == "bpf" and view["active"] and view["fallback"] == "", view
    # Every egress here is a veth whose peer is in another namespace: the short way.
    assert view["peer_routes"] == view["neighbors"], view
    assert all(ours(lab, name) for name in ("up0", "vm1", "vm2"))
    assert "table netdev portier" not in lab.ns(lab.proxy, "nft", "list", "ruleset").stdout
    before = settled_counter(daemon, "up0", "rx_data")
    assert lab.ping(lab.router, address1, count=50, extra=("-i", "0.01")).returncode == 0
    assert settled_counter(daemon, "up0", "rx_data") - before < 5
    assert daemon.call("fastpath")["kernel_packets"] - view["kernel_packets"] >= 100
    assert hop_limits_arriving(lab, 37) == [37, 37, 37]  # the guest's, untouched


def test_a_recreated_interface_gets_the_program_again(bpf):
    lab, daemon, _ = bpf
    guest = lab.guest_list[0]
    lab.recreate_guest_link(guest)
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    wait_for(lambda: ours(lab, guest.port), 5, "the program on the new vm1")
    assert lab.ping(lab.router, address).returncode == 0
    before = settled_counter(daemon, "up0", "rx_data")
    assert lab.ping(lab.router, address, count=20, extra=("-i", "0.01")).returncode == 0
    assert settled_counter(daemon, "up0", "rx_data") - before < 5


def test_drift_is_found_and_repaired(bpf):
    lab, daemon, _ = bpf
    lab.ns(lab.proxy, "tc", "filter", "del", "dev", "vm2", "ingress")
    assert not ours(lab, "vm2")
    result = daemon.call("fastpath", "--check")
    assert result["drift"] >= 1 and result["repairs"] >= 1, result
    assert ours(lab, "vm2")


def test_stop_removes_the_program_and_start_removes_leftovers(make_lab):
    lab = make_lab(guests=1)
    daemon = Daemon(lab, extra=BPF).start()
    lab.wait_slaac(lab.guest_list[0])
    wait_for(lambda: ours(lab, "vm1"), 5, "the program on vm1")
    # A crash leaves the program attached: the next start takes it off, then puts its own.
    daemon.process.kill()
    daemon.process.wait(timeout=10)
    assert ours(lab, "vm1")
    daemon.start()
    assert daemon.call("fastpath")["engine"] == "bpf"
    assert daemon.stop() == 0
    assert not ours(lab, "vm1") and not ours(lab, "up0")
    assert "table netdev portier" not in lab.ns(lab.proxy, "nft", "list", "ruleset").stdout


def test_a_program_that_does_not_load_falls_back_to_nftables(make_lab, tmp_path):
    lab = make_lab(guests=2)
    broken = tmp_path / "portier_tc.o"
    broken.write_bytes(b"\x7fELF not a BPF object")
    daemon = Daemon(lab, extra=BPF + f'bpf_object = "{broken}"\n').start()
    view = daemon.call("fastpath")
    assert view["engine"] == "nftables" and view["fallback"].startswith("bpf:"), view
    assert "fallback" in daemon.call("status")["fastpath"]
    address = lab.wait_slaac(lab.guest_list[0])
    lab.wait_ping(lab.router, address)
    assert "table netdev portier" in lab.ns(lab.proxy, "nft", "list", "ruleset").stdout
    assert not ours(lab, "vm1")


def test_the_kernel_answers_the_routers_ns_and_the_workers_do_not(bpf):
    lab, daemon, (address1, _) = bpf
    wait_for(lambda: daemon.call("status")["fastpath"]["engine"] == "bpf", 5, "the BPF path")
    kernel_before = daemon.call("fastpath")["answered"]
    workers_before = settled_counter(daemon, "up0", "answered")
    lab.ns(lab.router, "ip", "-6", "neigh", "flush", "dev", "r0")
    assert lab.ping(lab.router, address1).returncode == 0
    wait_for(
        lambda: daemon.call("fastpath")["answered"] > kernel_before,
        5,
        "the kernel's NA for the router's NS",
    )
    assert settled_counter(daemon, "up0", "answered") == workers_before


def test_reload_turns_the_bpf_path_off_and_on_again(bpf):
    lab, daemon, (address1, _) = bpf
    members = ("up0", "vm1", "vm2")
    on = daemon.config.read_text()
    daemon.config.write_text(on.replace("[fastpath]\n", "[fastpath]\nenabled = false\n"))
    assert daemon.call("reload")["changes"] == {"fastpath": "off"}
    view = daemon.call("fastpath")
    assert (view["engine"], view["active"]) == ("off", False), view
    assert not any(ours(lab, name) for name in members), "a filter left after turning off"
    assert lab.ping(lab.router, address1, count=3, extra=("-i", "0.2")).returncode == 0
    daemon.config.write_text(on)
    assert daemon.call("reload")["changes"] == {"fastpath": "on"}
    wait_for(lambda: daemon.call("fastpath")["engine"] == "bpf", 10, "the BPF path back")
    wait_for(lambda: all(ours(lab, name) for name in members), 10, "the program reattached")
    before = daemon.call("fastpath")["kernel_packets"]
    assert lab.ping(lab.router, address1, count=20, extra=("-i", "0.01")).returncode == 0
    assert daemon.call("fastpath")["kernel_packets"] - before >= 40
