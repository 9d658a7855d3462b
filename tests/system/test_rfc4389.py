"""What real hosts see through Portier: RFC 4389 behaviour checked end to end.

Each test builds its own lab (router with radvd, proxy host running the real portierd,
guests) and judges the proxy the way a network engineer would: with rdisc6, ndisc6,
ping, the hosts' own neighbor tables, captured ICMPv6, portierctl and the metrics.
"""

import ipaddress
import json
import subprocess
import sys
import time

import pytest
from lab import ROUTER_ADDRESS, ROUTER_LL, Lab, wait_for
from labdaemon import Daemon, GroupSpec, metric_samples, metrics_text
from peers import PEERS


def mac_of(lab: Lab, namespace: str, interface: str) -> str:
    return json.loads(lab.ns(namespace, "ip", "-j", "link", "show", interface).stdout)[0]["address"]


def neighbor_mac(lab: Lab, namespace: str, address: str, interface: str) -> str | None:
    entries = json.loads(
        lab.ns(namespace, "ip", "-j", "-6", "neigh", "show", address, "dev", interface).stdout
    )
    return entries[0].get("lladdr") if entries else None


def metrics(lab: Lab) -> dict[str, float]:
    return metric_samples(metrics_text(lab))


def watch_icmp(lab: Lab, namespace: str, kind: int, seconds: float) -> subprocess.Popen:
    watcher = lab.spawn(
        namespace,
        sys.executable,
        PEERS,
        "icmpwatch",
        str(kind),
        str(seconds),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout.readline().strip() == "listening"
    return watcher


def collected(watcher: subprocess.Popen) -> list[dict]:
    output, _ = watcher.communicate(timeout=60)
    return [json.loads(line) for line in output.splitlines()]


def test_slaac_through_the_proxy(lab, daemon):
    guest = lab.guest_list[0]
    lab.wait_link_local(guest.name)
    router_sees_rs = watch_icmp(lab, lab.router, 133, 3)
    # An RS as the kernel sends it, with the guest's own MAC in its SLLA option.
    lab.ns(guest.name, sys.executable, PEERS, "rs", "eth0", mac_of(lab, guest.name, "eth0"))
    solicited = lab.ns(guest.name, "rdisc6", "-1", "-w", "1000", "eth0")
    # The guest's RS reached the router, speaking with the proxy's upstream MAC.
    solicitations = collected(router_sees_rs)
    assert solicitations, "no Router Solicitation reached the router"
    # Every RS with a link-layer option (rdisc6's has none) names the proxy, not the guest.
    options = [bytes.fromhex(rs["hex"])[8:16] for rs in solicitations]
    with_slla = [o for o in options if o[:2] == b"\x01\x01"]
    assert with_slla, f"no RS with a source link-layer option: {solicitations}"
    assert {o[2:].hex(":") for o in with_slla} == {mac_of(lab, lab.proxy, "up0")}
    # The RA the guest got has the P flag and the proxy's downstream MAC as its source.
    assert "Neighbor discovery proxy  :          Yes" in solicited.stdout
    slla = solicited.stdout.split("Source link-layer address:")[1].split()[0].lower()
    assert slla == mac_of(lab, lab.proxy, "vm1")
    assert " Prefix                   : 2001:db8:1::/64" in solicited.stdout
    address = lab.wait_slaac(guest)
    assert ipaddress.IPv6Address(address) in ipaddress.IPv6Network("2001:db8:1::/64")


def test_router_and_guests_see_the_proxy_macs(lab, daemon):
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address, count=2).returncode == 0
    assert neighbor_mac(lab, lab.router, address, "r0") == mac_of(lab, lab.proxy, "up0")
    assert neighbor_mac(lab, guest.name, ROUTER_ADDRESS, "eth0") == mac_of(lab, lab.proxy, "vm1")
    # ndisc6 from the router resolves the guest; rdisc6 from the guest sees the router.
    resolved = lab.ns(lab.router, "ndisc6", "-1", "-w", "1000", address, "r0")
    assert f"Target link-layer address: {mac_of(lab, lab.proxy, 'up0').upper()}" in resolved.stdout
    assert " from " in lab.ns(guest.name, "rdisc6", "-1", "-w", "1000", "eth0").stdout


def test_a_known_guest_is_answered_for_at_once_and_still_asked(lab, daemon):
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)  # the proxy has now seen the guest
    router_hears = watch_icmp(lab, lab.router, 136, 3)
    guest_hears = watch_icmp(lab, guest.name, 135, 3)
    lab.ns(lab.router, "ip", "-6", "neigh", "flush", "dev", "r0")
    resolved = lab.ns(lab.router, "ndisc6", "-1", "-w", "1000", address, "r0")
    assert f"Target link-layer address: {mac_of(lab, lab.proxy, 'up0').upper()}" in resolved.stdout
    answers = [
        a
        for a in collected(router_hears)
        if a["hex"][16:48] == ipaddress.IPv6Address(address).packed.hex()
    ]
    # First the proxy's own answer: solicited, override clear (RFC 4861 §7.2.8), so
    # the guest's own NA, relayed after the NS reached it, still has the last word.
    assert answers, "no Neighbor Advertisement for the guest reached the router"
    flags = int(answers[0]["hex"][8:10], 16)
    assert flags & 0x40 and not flags & 0x20, answers
    assert any(int(a["hex"][8:10], 16) & 0x20 for a in answers[1:]), "the guest's own NA"
    asked = [s for s in collected(guest_hears) if s["destination"].startswith("ff02::1:ff")]
    assert asked, "the NS was not relayed to the guest"

    def answers_counted() -> int:
        """The kernel's (BPF engine) and the upstream worker's answers."""
        up0 = next(w for w in daemon.call("workers") if w["interface"] == "up0")
        return up0["counters"].get("answered", 0) + daemon.call("fastpath").get("answered", 0)

    wait_for(lambda: answers_counted() >= 1, 5, "the proxy to count its answer")


def test_unicast_neighbor_unreachability_detection_both_ways(lab, daemon):
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address).returncode == 0
    for namespace, peer, interface in (
        (lab.router, address, "r0"),
        (guest.name, ROUTER_ADDRESS, "eth0"),
    ):
        lab.sysctl(namespace, f"net.ipv6.neigh.{interface}.delay_first_probe_time", "0")
        target_ns = guest.name if namespace == lab.router else lab.router
        watcher = watch_icmp(lab, target_ns, 135, 4)
        lab.ns(namespace, "ip", "-6", "neigh", "change", peer, "dev", interface, "nud", "stale")
        assert lab.ping(namespace, peer).returncode == 0
        probes = [
            p
            for p in collected(watcher)
            if p["destination"] == (address if namespace == lab.router else ROUTER_ADDRESS)
        ]
        assert probes, f"no unicast NS from {namespace} reached its peer"
        wait_for(
            lambda n=namespace, p=peer, i=interface: (
                "REACHABLE" in lab.ns(n, "ip", "-6", "neigh", "show", p, "dev", i).stdout
            ),
            5,
            f"{namespace} confirmed",
        )


@pytest.mark.parametrize("duplicate_of", ["other guest", "router"])
def test_duplicate_address_detection_across_the_proxy(lab, daemon, duplicate_of):
    guest1, guest2 = lab.guest_list
    taken = lab.wait_slaac(guest1) if duplicate_of == "other guest" else ROUTER_ADDRESS
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    lab.ns(guest2.name, "ip", "-6", "addr", "add", f"{taken}/64", "dev", "eth0")
    wait_for(
        lambda: (
            "dadfailed" in lab.ns(guest2.name, "ip", "-6", "addr", "show", "dev", "eth0").stdout
        ),
        10,
        f"DAD to fail for {taken}",
    )


def test_redirect_is_rewritten_for_the_guest(lab, daemon):
    guest = lab.guest_list[0]
    lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    guest_ll = lab.wait_link_local(guest.name)
    watcher = watch_icmp(lab, guest.name, 137, 3)
    lab.ns(
        lab.router,
        sys.executable,
        PEERS,
        "redirect",
        "r0",
        guest_ll,
        ROUTER_LL,
        "2001:db8:1::77",
        mac_of(lab, lab.router, "r0"),
    )
    redirects = collected(watcher)
    assert len(redirects) == 1, "the Redirect did not reach the guest"
    message = bytes.fromhex(redirects[0]["hex"])  # the kernel verified its checksum
    assert redirects[0]["hop_limit"] == 255
    assert message[8:24] == ipaddress.IPv6Address(ROUTER_LL).packed
    assert message[24:40] == ipaddress.IPv6Address("2001:db8:1::77").packed
    assert message[40:42] == b"\x02\x01"
    assert message[42:48].hex(":") == mac_of(lab, lab.proxy, "vm1")
    assert message[48:] == bytes([4, 7]) + bytes(54)  # redirected header unchanged


def test_loop_detection_disables_and_clearing_works(lab, daemon):
    guest2 = lab.guest_list[1]
    lab.wait_link_local(guest2.name)
    lab.ns(guest2.name, sys.executable, PEERS, "ra", "eth0", "00")
    wait_for(
        lambda: daemon.call("status")["disabled"] == {"vm2": ["loop_detected"]},
        10,
        "vm2 loop-disabled",
    )
    wait_for(
        lambda: metrics(lab).get('portier_loop_detections_total{interface="vm2"}') == 1,
        5,
        "the loop in the metrics",
    )
    assert metrics(lab)['portier_interfaces_disabled{reason="loop_detected"}'] == 1
    assert daemon.call("enable", "vm2") is None
    assert daemon.call("status")["disabled"] == {}
    # A proxied RA (P flag) on the upstream is a loop too, outside nested mode...
    lab.ns(lab.router, sys.executable, PEERS, "ra", "r0", "04")
    wait_for(
        lambda: daemon.call("status")["disabled"] == {"up0": ["loop_detected"]},
        10,
        "up0 loop-disabled",
    )
    daemon.call("enable", "up0")
    # ...and accepted in nested mode, where the upstream is itself behind a proxy.
    daemon.call("nested", "on")
    watcher = watch_icmp(lab, lab.guest_list[0].name, 134, 3)
    lab.ns(lab.router, sys.executable, PEERS, "ra", "r0", "04")
    advertisements = collected(watcher)
    assert any(bytes.fromhex(a["hex"])[5] & 0x04 for a in advertisements)
    assert daemon.call("status")["disabled"] == {}


def test_nested_proxies(make_lab):
    lab = make_lab(guests=1, nested=True)
    outer = Daemon(lab).start()
    inner = Daemon(
        lab,
        [GroupSpec("lan", "up0", ["vm1"])],
        extra="nested = true",
        namespace=lab.inner,
        workdir=lab.workdir / "inner",
    ).start()
    guest = lab.inner_guest
    address = lab.wait_slaac(guest, timeout=30)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address, count=3).returncode == 0
    reply = lab.ping(lab.router, address)
    assert "ttl=64" in reply.stdout  # two proxies, still no hop taken
    assert inner.call("status")["disabled"] == {} and outer.call("status")["disabled"] == {}
    assert neighbor_mac(lab, lab.router, address, "r0") == mac_of(lab, lab.proxy, "up0")


def test_groups_are_isolated(make_lab):
    lab = make_lab(guests=2, isolated_guests=1)
    daemon = Daemon(lab).start()
    guest1, _, isolated = lab.guest_list
    address1 = lab.wait_slaac(guest1)
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    before = metrics(lab)
    watcher = watch_icmp(lab, guest1.name, 135, 3)
    assert lab.ping(isolated.name, address1, count=2, timeout_s=1).returncode != 0
    assert lab.ping(guest1.name, isolated.static_address, count=2, timeout_s=1).returncode != 0
    from_isolated = [n for n in collected(watcher) if n["source"] == isolated.static_address]
    assert from_isolated == [], "an NS crossed from the isolated group"
    after = metrics(lab)
    key = 'portier_frames_forwarded_total{group="iso",interface="vm3"}'
    assert after.get(key, 0) == before.get(key, 0) == 0  # nothing ever sent into iso
    assert all(n["interface"] == "vm3" for n in daemon.call("neighbors", "--group", "iso"))


def test_oversized_packets_get_packet_too_big(lab, daemon):
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address).returncode == 0
    lab.ns(lab.proxy, "ip", "link", "set", "vm1", "mtu", "1280")
    lab.ns(guest.name, "ip", "link", "set", "eth0", "mtu", "1280")
    wait_for(
        lambda: next(i for i in daemon.call("interfaces") if i["name"] == "vm1")["mtu"] == 1280,
        10,
        "the proxy to see vm1's new MTU",
    )
    big = lab.ping(lab.router, address, count=2, extra=("-s", "1400", "-M", "do"))
    assert "mtu=1280" in big.stdout or "mtu: 1280" in big.stdout, big.stdout + big.stderr
    route = lab.ns(lab.router, "ip", "-6", "route", "get", address).stdout
    assert "mtu 1280" in route  # the router learned the path MTU from our Packet Too Big
    assert lab.ping(lab.router, address, count=2, extra=("-s", "1200")).returncode == 0
    assert metrics(lab)['portier_packet_too_big_sent_total{interface="up0"}'] >= 1


def test_metrics_count_what_was_forwarded(lab, daemon):
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)

    def forwarded_to_vm1() -> float:
        # The kernel fast path forwards once the neighbor is programmed, the worker before
        # that; a check refreshes the kernel's count.  Together they count every echo.
        daemon.call("fastpath", "--check")
        now = metrics(lab)
        return (
            now['portier_frames_forwarded_total{group="lan",interface="vm1"}']
            + now["portier_fastpath_forwarded_packets_total"]
        )

    before = forwarded_to_vm1()
    assert lab.ping(lab.router, address, count=5, extra=("-i", "0.05")).returncode == 0
    wait_for(lambda: forwarded_to_vm1() >= before + 5, 5, "5 echo requests counted to vm1")


def router_solicitations_sent(lab: Lab) -> int:
    counters = lab.ns(lab.router, "cat", "/proc/net/snmp6").stdout
    return int(
        next(
            line.split()[1]
            for line in counters.splitlines()
            if line.startswith("Icmp6OutNeighborSolicits")
        )
    )


def test_a_migrated_guest_is_announced_before_the_router_probes(lab, daemon):
    """The router still names another host's MAC for an address (the VM lived there);
    once the guest speaks from it here, the proxy's unsolicited NA corrects the entry."""
    guest1, guest2 = lab.guest_list
    address2 = lab.wait_slaac(guest2)
    lab.wait_ping(guest1.name, address2)
    moved = "2001:db8:1::99"
    stale = "02:99:00:00:00:01"
    lab.ns(
        lab.router,
        "ip",
        "-6",
        "neigh",
        "replace",
        moved,
        "lladdr",
        stale,
        "dev",
        "r0",
        "nud",
        "stale",
    )
    assert neighbor_mac(lab, lab.router, moved, "r0") == stale
    upstream_mac = mac_of(lab, lab.proxy, "up0")
    probes_before = router_solicitations_sent(lab)
    lab.ns(guest1.name, "ip", "-6", "addr", "add", f"{moved}/64", "dev", "eth0", "nodad")
    started = time.monotonic()
    # It speaks to its neighbor, never to the router: only the proxy can tell the router.
    assert lab.ping(guest1.name, address2, extra=("-I", moved)).returncode == 0
    wait_for(
        lambda: neighbor_mac(lab, lab.router, moved, "r0") == upstream_mac,
        1.0,
        "the router's entry to name the proxy's upstream MAC",
    )
    elapsed = time.monotonic() - started
    assert router_solicitations_sent(lab) == probes_before, "the router had to ask"
    assert elapsed < 1.5
    assert metrics(lab)['portier_announcements_total{interface="vm1",outcome="sent"}'] >= 1
