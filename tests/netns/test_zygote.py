"""Workers forked from the zygote, on real kernel hosts: where they come from, and what
happens when the zygote or a worker is killed, or the zygote hangs."""

import os
import signal
from pathlib import Path

import pytest
from lab import ROUTER_ADDRESS, wait_for
from labdaemon import Daemon


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def zygote(daemon: Daemon) -> dict:
    return daemon.call("status")["zygote"]


def workers(daemon: Daemon) -> dict[str, dict]:
    return {w["interface"]: w for w in daemon.call("workers")}


def ready_zygote_other_than(daemon: Daemon, old_pid: int) -> dict:
    wait_for(
        lambda: (z := zygote(daemon))["state"] == "ready" and z["pid"] not in (None, old_pid),
        20,
        f"a new zygote in place of pid {old_pid}",
        interval=0.1,
    )
    return zygote(daemon)


def replaced_worker(daemon: Daemon, interface: str, old_pid: int) -> dict:
    wait_for(
        lambda: (
            (w := workers(daemon)[interface])["pid"] not in (None, old_pid)
            and w["state"] == "running"
        ),
        20,
        f"a running {interface} worker in place of pid {old_pid}",
        interval=0.1,
    )
    return workers(daemon)[interface]


def nd_works(lab, guest) -> None:
    """The guest's ND through the proxy: forget the router, then reach it again."""
    lab.ns(guest.name, "ip", "-6", "neigh", "flush", "dev", "eth0")
    assert lab.ping(guest.name, ROUTER_ADDRESS, count=1).returncode == 0


@pytest.fixture
def running(make_lab):
    lab = make_lab(guests=2)
    daemon = Daemon(lab).start()
    for guest in lab.guest_list:
        lab.wait_slaac(guest)
        lab.wait_ping(guest.name, ROUTER_ADDRESS)
    yield lab, daemon
    pid = zygote(daemon)["pid"] if daemon.process and daemon.process.poll() is None else None
    if pid:  # a test may leave it stopped
        os.kill(pid, signal.SIGCONT)


def test_workers_are_forked_from_a_single_threaded_zygote(running):
    _lab, daemon = running
    assert daemon.process is not None
    z = zygote(daemon)
    assert z["state"] == "ready" and z["spawned"] == 3
    zygote_pid = z["pid"]
    assert parent_of(zygote_pid) == daemon.process.pid
    assert len(os.listdir(f"/proc/{zygote_pid}/task")) == 1  # no thread to be caught in a fork
    for name, worker in workers(daemon).items():
        assert worker["spawned_by"] == "zygote", name
        assert parent_of(worker["pid"]) == zygote_pid, name
        assert Path(f"/proc/{worker['pid']}/comm").read_text().startswith("portier-w"), name


def test_a_killed_zygote_is_respawned_and_its_workers_live_on(running):
    lab, daemon = running
    old = zygote(daemon)["pid"]
    before = {name: w["pid"] for name, w in workers(daemon).items()}
    os.kill(old, signal.SIGKILL)
    new = ready_zygote_other_than(daemon, old)
    assert new["restarts"] == 1
    assert parent_of(new["pid"]) == daemon.process.pid
    after = workers(daemon)
    assert {name: w["pid"] for name, w in after.items()} == before  # nobody restarted
    assert all(w["state"] == "running" and w["restarts"] == 0 for w in after.values())
    for guest in lab.guest_list:
        nd_works(lab, guest)
    # An orphan of the old zygote that dies is seen (through its pidfd) and forked anew.
    os.kill(before["vm1"], signal.SIGKILL)
    worker = replaced_worker(daemon, "vm1", before["vm1"])
    assert worker["spawned_by"] == "zygote" and parent_of(worker["pid"]) == new["pid"]
    nd_works(lab, lab.guest_list[0])


def test_a_killed_worker_is_forked_again_from_the_zygote(running):
    lab, daemon = running
    zygote_pid = zygote(daemon)["pid"]
    old = workers(daemon)["vm1"]
    os.kill(old["pid"], signal.SIGKILL)
    worker = replaced_worker(daemon, "vm1", old["pid"])
    assert worker["spawned_by"] == "zygote" and worker["restarts"] == 1
    assert parent_of(worker["pid"]) == zygote_pid
    assert worker["last_exit"] == -signal.SIGKILL  # the zygote reported how it ended
    nd_works(lab, lab.guest_list[0])


def test_workers_start_by_exec_while_the_zygote_does_not_answer(running):
    lab, daemon = running
    old_zygote = zygote(daemon)["pid"]
    os.kill(old_zygote, signal.SIGSTOP)  # alive, but deaf to requests
    old = workers(daemon)["vm1"]
    os.kill(old["pid"], signal.SIGKILL)
    worker = replaced_worker(daemon, "vm1", old["pid"])
    assert worker["spawned_by"] == "exec"
    assert parent_of(worker["pid"]) == daemon.process.pid
    nd_works(lab, lab.guest_list[0])
    # The deaf zygote was killed and a new one took its place; the next worker comes from it.
    wait_for(lambda: not alive(old_zygote), 10, "the hung zygote killed", interval=0.1)
    new = ready_zygote_other_than(daemon, old_zygote)
    os.kill(worker["pid"], signal.SIGKILL)
    again = replaced_worker(daemon, "vm1", worker["pid"])
    assert again["spawned_by"] == "zygote" and parent_of(again["pid"]) == new["pid"]
    nd_works(lab, lab.guest_list[0])
