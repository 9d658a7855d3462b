"""Metrics and status as an operator reads them, after real traffic through the lab."""

import re
import sys
import time
from pathlib import Path

import pytest
from lab import ROUTER_ADDRESS, Lab, wait_for
from labdaemon import Daemon, metrics_text
from peers import PEERS
from prometheus_client.parser import text_string_to_metric_families
from unit.ndframes import nd_frame

from portier.addresses import parse_ipv6, parse_mac, solicited_node
from portier.ndmsg import LinkLayerAddressOption, NeighborSolicitation

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def families(lab: Lab) -> set[str]:
    """Every metric name the endpoint declares, samples or not (counters with _total)."""
    names = set()
    for family in text_string_to_metric_families(metrics_text(lab)):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        names.update(sample.name for sample in family.samples)
    return names


def scrape(lab: Lab) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(metrics_text(lab)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def settled(lab: Lab) -> dict[tuple[str, tuple], float]:
    """A scrape once the workers' reports have caught up with past traffic.

    Workers report their counters every second, so two scrapes more than a report apart
    that agree on every frame counter mean nothing is still on its way.
    """

    def frames(samples):
        return {k: v for k, v in samples.items() if k[0].startswith("portier_frames")}

    previous = scrape(lab)
    for _ in range(10):
        time.sleep(1.1)  # one heartbeat period: the event we wait for has no other signal
        current = scrape(lab)
        if frames(current) == frames(previous):
            return current
        previous = current
    raise AssertionError("frame counters never settled")


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def running(make_lab):
    lab = make_lab(guests=1)
    # The workers' counters are the subject here: keep unicast in userspace.
    daemon = Daemon(lab, extra="[fastpath]\nenabled = false").start()
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address).returncode == 0
    return lab, daemon, guest, address


def mac_of(lab: Lab, namespace: str, interface: str) -> str:
    out = lab.ns(namespace, "cat", f"/sys/class/net/{interface}/address").stdout
    return out.strip()


def test_pings_move_the_counters_by_exactly_their_number(running):
    lab, _daemon, guest, address = running
    # Pin both ends' neighbor entries so that no ND runs during the count.
    lab.ns(
        lab.router,
        "ip",
        "-6",
        "neigh",
        "replace",
        address,
        "lladdr",
        mac_of(lab, lab.proxy, "up0"),
        "dev",
        "r0",
        "nud",
        "permanent",
    )
    lab.ns(
        guest.name,
        "ip",
        "-6",
        "neigh",
        "replace",
        ROUTER_ADDRESS,
        "lladdr",
        mac_of(lab, lab.proxy, "vm1"),
        "dev",
        "eth0",
        "nud",
        "permanent",
    )
    before = settled(lab)
    count = 10
    assert lab.ping(lab.router, address, count=count, extra=("-i", "0.02")).returncode == 0

    def delta(name: str, **labels) -> float:
        return value(scrape_now[0], name, **labels) - value(before, name, **labels)

    scrape_now = [before]

    def moved() -> bool:
        scrape_now[0] = scrape(lab)
        requests = delta("portier_frames_received_total", group="lan", interface="up0", kind="data")
        replies = delta("portier_frames_received_total", group="lan", interface="vm1", kind="data")
        return requests == count and replies == count

    # Workers report once a second: wait for the report that includes the pings.
    wait_for(moved, 5, f"{count} echo requests in on up0 and {count} replies in on vm1")
    # Everything that came in on one side went out of the other: the pings, and whatever
    # ND (periodic RAs, NUD) happened to pass meanwhile, counted as ND on the way in.
    for ingress, egress in (("up0", "vm1"), ("vm1", "up0")):
        arrived = sum(
            delta("portier_frames_received_total", group="lan", interface=ingress, kind=kind)
            for kind in ("data", "nd")
        )
        assert delta("portier_frames_forwarded_total", group="lan", interface=egress) == arrived


def test_a_malformed_nd_frame_is_counted_under_its_reason(running):
    lab, daemon, guest, _ = running
    guest_mac = parse_mac(mac_of(lab, guest.name, "eth0"))
    source = parse_ipv6(lab.wait_link_local(guest.name))
    ns = NeighborSolicitation(parse_ipv6(ROUTER_ADDRESS), (LinkLayerAddressOption(1, guest_mac),))
    frame = bytearray(nd_frame(guest_mac, None, source, solicited_node(ns.target), ns))
    frame[56] ^= 0x5A  # break the checksum
    before = scrape(lab)
    lab.ns(guest.name, sys.executable, PEERS, "rawsend", "eth0", bytes(frame).hex())
    key = {"group": "lan", "interface": "vm1", "reason": "bad_checksum"}
    wait_for(
        lambda: (
            value(scrape(lab), "portier_frames_dropped_total", **key)
            == value(before, "portier_frames_dropped_total", **key) + 1
        ),
        5,
        "the bad checksum counted",
    )
    status = daemon.call("status")
    assert status["frames"]["dropped"] >= 1 and status["frames"]["forwarded"] > 0
    human = daemon.ctl("status", json_output=False).stdout
    assert re.search(r"frames: received \d+, forwarded \d+, dropped [1-9]", human), human


def test_every_family_the_deploy_files_use_is_exported(running):
    lab, daemon, _, _ = running
    exported = families(lab)
    used = set()
    for path in (
        DEPLOY / "prometheus" / "alerts.yml",
        DEPLOY / "grafana" / "portier-dashboard.json",
    ):
        used |= set(re.findall(r"portier_[a-z_]+", path.read_text()))
    missing = {name for name in used if name not in exported}
    assert not missing, f"used by the deploy files but never exported: {sorted(missing)}"
    samples = scrape(lab)
    assert value(samples, "portier_build_info", version=daemon.call("status")["version"]) == 1
    assert value(samples, "portier_workers", state="running") == 2
    assert value(samples, "portier_nd_relay_seconds_count", interface="vm1") > 0


def test_runs_with_only_two_capabilities(make_lab):
    """What the systemd unit grants: CAP_NET_RAW and CAP_NET_ADMIN, nothing else.

    The unit also drops to an unprivileged user; this machine's Python lives under a
    0700 /root, which no other user can execute, so here the uid stays 0 and only the
    capability sets are cut down (no CAP_DAC_OVERRIDE, no CAP_SYS_ADMIN, ...).
    """
    lab = make_lab(guests=1)
    daemon = Daemon(lab)
    daemon.start(
        launcher=[
            "setpriv",
            "--bounding-set=-all,+net_raw,+net_admin",
            "--inh-caps=-all,+net_raw,+net_admin",
            "--ambient-caps=-all,+net_raw,+net_admin",
        ]
    )
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address).returncode == 0
    for pid in [daemon.process.pid, *(w["pid"] for w in daemon.call("workers"))]:
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(r"^CapEff:\s+0000000000003000$", status, re.M), status  # ADMIN|RAW
    assert all(w["state"] == "running" and w["restarts"] == 0 for w in daemon.call("workers"))
