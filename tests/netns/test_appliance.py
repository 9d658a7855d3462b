"""The running appliance on real kernel hosts: radvd, SLAAC, ping, TCP, restarts."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab import ROUTER_ADDRESS, leftover_namespaces, run, wait_for
from labdaemon import Daemon, GroupSpec
from peers import PEERS


def allmulti(lab, interface: str) -> int:
    """The kernel's all-multicast reference count of a proxy-side interface."""
    link = json.loads(lab.ns(lab.proxy, "ip", "-d", "-j", "link", "show", interface).stdout)
    return link[0]["allmulti"]


def test_slaac_ping_and_group_isolation(make_lab):
    lab = make_lab(guests=2, isolated_guests=1)
    daemon = Daemon(lab).start()
    guest1, guest2, isolated = lab.guest_list
    address1 = lab.wait_slaac(guest1)
    address2 = lab.wait_slaac(guest2)
    for address in (address1, address2):
        assert address.startswith("2001:db8:1:0:"), address
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address1, count=3).returncode == 0
    assert lab.ping(guest2.name, ROUTER_ADDRESS, count=3).returncode == 0
    assert lab.ping(guest1.name, address2, count=3).returncode == 0
    # The isolated guest sits in the same prefix but in another group.
    assert lab.ping(isolated.name, address1, count=2, timeout_s=1).returncode != 0
    assert lab.ping(isolated.name, ROUTER_ADDRESS, count=2, timeout_s=1).returncode != 0
    assert lab.ping(lab.router, isolated.static_address, count=2, timeout_s=1).returncode != 0
    status = daemon.status()
    learned = {(n["group"], n["address"]) for n in status["neighbors"]}
    assert ("lan", address1) in learned and ("lan", ROUTER_ADDRESS) in learned
    assert not any(group == "iso" and address == address1 for group, address in learned)
    assert all(w["state"] == "running" for w in status["workers"])


@pytest.mark.parametrize("fastpath", ["userspace", "kernel fast path"])
def test_tcp_10mb_arrives_intact_and_hop_limit_is_untouched(make_lab, fastpath):
    lab = make_lab(guests=1)
    enabled = "true" if fastpath == "kernel fast path" else "false"
    Daemon(lab, extra=f"[fastpath]\nenabled = {enabled}").start()
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    server = lab.spawn(
        lab.router,
        sys.executable,
        PEERS,
        "server",
        "5001",
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout.readline().strip() == "listening"
    size = 10 * 1024 * 1024
    client = lab.ns(
        guest.name, sys.executable, PEERS, "client", ROUTER_ADDRESS, "5001", str(size), timeout=120
    )
    sent = client.stdout.split()
    received = server.stdout.readline().split()
    assert received == sent and int(received[0]) == size
    errors = lab.ns(lab.router, "nstat", "-az", "TcpInCsumErrors").stdout
    assert re.search(r"TcpInCsumErrors\s+0\s", errors), errors
    # The hop limit the guest chose is the one the router sees: 37 stays 37.
    receiver = lab.spawn(
        lab.router,
        sys.executable,
        PEERS,
        "udprecv",
        "5002",
        "3",
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout.readline().strip() == "listening"
    sender = lab.spawn(guest.name, sys.executable, PEERS, "udpsend", ROUTER_ADDRESS, "5002", "37")
    hops = [receiver.stdout.readline().strip() for _ in range(3)]
    sender.terminate()
    assert hops == ["37", "37", "37"]
    # And the other way: the router's pings come back with the guest's own 64.
    reply = lab.ping(lab.router, address, count=1)
    assert "ttl=64" in reply.stdout, reply.stdout


def test_worker_kill_resumes_with_every_neighbor(make_lab):
    lab = make_lab(guests=2)
    daemon = Daemon(lab).start()
    guest1, guest2 = lab.guest_list
    address1, address2 = lab.wait_slaac(guest1), lab.wait_slaac(guest2)
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    lab.wait_ping(guest2.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address1).returncode == 0
    before = daemon.status()
    learned = {(n["group"], n["address"]) for n in before["neighbors"]}
    old = next(w for w in before["workers"] if w["interface"] == "vm1")
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(
        lambda: (
            (w := daemon.worker("vm1"))["pid"] not in (None, old["pid"])
            and w["state"] == "running"
            and w["counters"].get("replica_neighbors", 0) >= len(learned)
        ),
        20,
        "a restarted vm1 worker holding the whole neighbor cache",
        interval=0.2,
    )
    assert lab.ping(lab.router, address1, count=3).returncode == 0
    assert lab.ping(guest1.name, address2, count=3).returncode == 0
    after = daemon.status()
    known_after = {(n["group"], n["address"]) for n in after["neighbors"]}
    assert learned <= known_after
    worker = next(w for w in after["workers"] if w["interface"] == "vm1")
    assert worker["restarts"] == 1
    # The restarted worker held nothing for a neighbor known before the kill.  A frame
    # may wait for one first heard of since (the router answering from another of its
    # addresses, say), until the learning worker's report reaches this one.
    assert worker["counters"].get("held", 0) <= len(known_after - learned)


def test_recreated_guest_interface_is_reachable_again(make_lab):
    lab = make_lab(guests=1)
    daemon = Daemon(lab).start()
    guest = lab.guest_list[0]
    lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    old_ifindex = next(i for i in daemon.status()["interfaces"] if i["name"] == "vm1")["ifindex"]
    lab.recreate_guest_link(guest)
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    assert lab.ping(lab.router, address, count=3).returncode == 0
    vm1 = next(i for i in daemon.status()["interfaces"] if i["name"] == "vm1")
    assert vm1["ifindex"] != old_ifindex and vm1["forwarding"]
    # Link down and up again on the proxy side.
    lab.ns(lab.proxy, "ip", "link", "set", "vm1", "down")
    wait_for(
        lambda: (
            "link_down"
            in next(i for i in daemon.status()["interfaces"] if i["name"] == "vm1")[
                "disable_reasons"
            ]
        ),
        10,
        "vm1 disabled as link-down",
        interval=0.2,
    )
    lab.ns(lab.proxy, "ip", "link", "set", "vm1", "up")
    lab.wait_ping(guest.name, ROUTER_ADDRESS)


def test_thirty_two_guests_in_one_group(make_lab):
    lab = make_lab(guests=32)
    daemon = Daemon(lab).start(timeout=90)
    addresses = [lab.wait_slaac(guest, timeout=60) for guest in lab.guest_list]
    assert len(set(addresses)) == 32
    for guest, address in zip(lab.guest_list, addresses, strict=True):
        lab.wait_ping(guest.name, ROUTER_ADDRESS, timeout=20)
        assert lab.ping(lab.router, address).returncode == 0, guest.name
    assert sum(w["state"] == "running" for w in daemon.status()["workers"]) == 33


def test_graceful_stop_restores_everything(make_lab):
    lab = make_lab(guests=1)
    daemon = Daemon(lab).start()
    lab.wait_slaac(lab.guest_list[0])
    assert allmulti(lab, "vm1") > 0
    started = time.monotonic()
    assert daemon.stop(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert not (daemon.runtime_dir / "workers.sock").exists()
    assert (lab.workdir / "state" / "state.msgpack").exists()
    for name in ("up0", "vm1"):
        assert allmulti(lab, name) == 0
    assert run("ip", "netns", "pids", lab.proxy).stdout.strip() == ""  # workers gone too


def test_invalid_configuration_touches_nothing(make_lab, tmp_path):
    lab = make_lab(guests=1, radvd=False)
    daemon = Daemon(lab, [GroupSpec("lan", "up0", ["vm1", "up0"])])
    result = lab.ns(
        lab.proxy,
        sys.executable,
        "-m",
        "portier.supervisor",
        "--config",
        str(daemon.config),
        check=False,
    )
    assert result.returncode == 2
    assert str(daemon.config) in result.stderr and "group[0].members[1]" in result.stderr
    assert allmulti(lab, "vm1") == 0
    assert not daemon.runtime_dir.exists()


def test_labs_leave_nothing_behind(make_lab):
    lab = make_lab(guests=1)
    Daemon(lab).start()
    lab.down()
    assert leftover_namespaces(lab.prefix) == []


def test_hung_worker_is_killed_and_replaced(make_lab):
    lab = make_lab(guests=1)
    daemon = Daemon(lab).start()
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    old = daemon.worker("vm1")["pid"]
    os.kill(old, signal.SIGSTOP)  # alive but silent: only missed heartbeats can tell
    wait_for(
        lambda: (w := daemon.worker("vm1"))["pid"] not in (None, old) and w["state"] == "running",
        20,
        "the silent vm1 worker to be replaced",
        interval=0.2,
    )
    status = Path(f"/proc/{old}/status")
    assert not status.exists() or "zombie" in status.read_text()  # it was killed
    assert lab.ping(lab.router, address, count=3).returncode == 0


def test_a_stopped_supervisor_does_not_take_its_workers_for_hung(make_lab):
    lab = make_lab(guests=1)
    daemon = Daemon(lab).start()
    guest = lab.guest_list[0]
    address = lab.wait_slaac(guest)
    lab.wait_ping(guest.name, ROUTER_ADDRESS)
    before = {w["interface"]: (w["pid"], w["restarts"]) for w in daemon.call("workers")}
    assert daemon.process is not None
    # Longer than the heartbeat timeout (5 s), shorter than the workers' own patience.
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        assert lab.ping(lab.router, address, count=8).returncode == 0  # the workers forward
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    wait_for(lambda: daemon.call("status")["ready"], 10, "ready again")
    time.sleep(6)  # a heartbeat timeout's worth after the stall: no kill may follow
    after = {w["interface"]: (w["pid"], w["restarts"]) for w in daemon.call("workers")}
    assert after == before
    assert "heartbeat deadlines start afresh" in daemon.log_tail(5000)
