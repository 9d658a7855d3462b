"""The fast path when nft stops working: it turns itself off, says why, and comes back.

The daemon test runs the real portierd with an `nft` of its own (a wrapper in the lab's
folder, first on its PATH) and makes that wrapper non-executable while the daemon runs.
The unit tests drive a FastPath against the real nft inside a namespace of their own,
through a wrapper script `ip netns exec NS nft "$@"` whose execute bit they take away and
give back; they never touch the system's nft.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import subprocess
import time
from pathlib import Path

import pytest
from lab import ROUTER_ADDRESS, run, wait_for
from labdaemon import Daemon

from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.supervisor import fastpath as fastpath_module
from portier.supervisor.fastpath import FastPath, neighbor_chain

NFT = "/usr/sbin/nft"
NFT_ENGINE = '[fastpath]\nengine = "nftables"\n'


def executable(path: Path, on: bool) -> None:
    mode = path.stat().st_mode
    bits = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    path.chmod(mode | bits if on else mode & ~bits)


def fastpath_when(daemon: Daemon, active: bool) -> dict | None:
    state = daemon.call("fastpath")
    return state if state["active"] == active else None


def worker_restarts(daemon: Daemon) -> dict[str, int]:
    return {w["interface"]: w["restarts"] for w in daemon.call("workers")}


def new_neighbor(lab, guest) -> str:
    """An address on `guest` that nothing has used yet, reached from the router, so the
    fast path must program a neighbor now (a guest's SLAAC address may have been learned
    from its own traffic already)."""
    address = lab.wait_slaac(guest).rsplit(":", 1)[0] + ":4242"
    lab.ns(guest.name, "ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
    lab.wait_ping(lab.router, address, timeout=10)
    return address


# --- the daemon --------------------------------------------------------------------------


@pytest.fixture
def daemon_with_own_nft(make_lab):
    lab = make_lab(guests=2)
    bindir = lab.workdir / "bin"
    bindir.mkdir()
    wrapper = bindir / "nft"
    wrapper.write_text(f'#!/bin/sh\nexec {NFT} "$@"\n')
    executable(wrapper, True)
    path = f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    daemon = Daemon(lab, extra=NFT_ENGINE).start(launcher=["env", f"PATH={path}"])
    guest1 = lab.guest_list[0]
    address1 = lab.wait_slaac(guest1)
    lab.wait_ping(guest1.name, ROUTER_ADDRESS)
    wait_for(lambda: daemon.call("fastpath")["neighbors"] >= 2, 10, "neighbors in the kernel")
    assert daemon.call("fastpath")["active"]
    return lab, daemon, wrapper, address1


def test_nft_unusable_turns_the_fast_path_off_and_the_daemon_carries_on(daemon_with_own_nft):
    lab, daemon, wrapper, _ = daemon_with_own_nft
    restarts = worker_restarts(daemon)
    executable(wrapper, False)
    address2 = new_neighbor(lab, lab.guest_list[1])
    state = wait_for(
        lambda: fastpath_when(daemon, active=False),
        10,
        "the fast path to turn itself off",
    )
    assert "Permission denied" in state["reason"], state
    assert state["failures"] >= 1 and state["retry_in_s"] is not None
    assert "fast path off" in daemon.ctl("status", json_output=False).stdout
    # Its nft cannot run, yet nothing stale is left forwarding in the kernel.
    assert "portier" not in lab.ns(lab.proxy, NFT, "list", "ruleset").stdout
    # The workers carry everything, to the new guest too.
    assert lab.ping(lab.router, address2, count=3).returncode == 0
    # Past the workers' silence limit (15 s): nobody stopped talking to them, so no
    # worker was restarted, and the supervisor still learns.
    deadline = time.monotonic() + 18
    while time.monotonic() < deadline:
        assert worker_restarts(daemon) == restarts, daemon.log_tail()
        time.sleep(1)
    assert daemon.process is not None and daemon.process.poll() is None
    learned = {n["address"] for n in daemon.call("neighbors")}
    assert address2 in learned


def test_the_fast_path_comes_back_by_itself(daemon_with_own_nft):
    lab, daemon, wrapper, _ = daemon_with_own_nft
    executable(wrapper, False)
    new_neighbor(lab, lab.guest_list[1])
    wait_for(lambda: not daemon.call("fastpath")["active"], 10, "the fast path off")
    executable(wrapper, True)
    # The retry backoff is at most a few seconds this early in the failure streak.
    state = wait_for(
        lambda: fastpath_when(daemon, active=True),
        20,
        "the fast path back on",
    )
    assert state["reason"] == "" and state["neighbors"] >= 3
    assert "fast path on again" in daemon.log_path.read_text()


# --- FastPath against the real nft in a namespace of its own ---------------------------


class NftNamespace:
    """A network namespace with two veth pairs in it, and an nft wrapper that runs there."""

    def __init__(self, workdir: Path) -> None:
        self.name = "ptfp" + secrets.token_hex(3)
        self.wrapper = workdir / "nft"
        self.created = False

    def up(self) -> NftNamespace:
        run("ip", "netns", "add", self.name)
        self.created = True
        for a, b in (("m1", "p1"), ("m2", "p2")):
            self.ip("link", "add", a, "type", "veth", "peer", "name", b)
            self.ip("link", "set", a, "up")
            self.ip("link", "set", b, "up")
        self.wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {NFT} "$@"\n')
        executable(self.wrapper, True)
        return self

    def down(self) -> None:
        if self.created:
            run("ip", "netns", "del", self.name, check=False)

    def ip(self, *argv: str) -> str:
        return run("ip", "-n", self.name, *argv).stdout

    def nft(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, NFT, *argv, check=check)

    def link(self, name: str) -> tuple[int, bytes]:
        data = json.loads(self.ip("-j", "link", "show", name))[0]
        return data["ifindex"], bytes.fromhex(data["address"].replace(":", ""))

    def delete_element(self, where: str) -> None:
        self.nft("delete", "element", "netdev", "portier", "g_" + b"lan".hex(), f"{{ {where} }}")

    def ruleset(self) -> str:
        return self.nft("list", "ruleset").stdout

    def map_elements(self) -> set[str]:
        listing = self.nft("-j", "list", "map", "netdev", "portier", "g_" + b"lan".hex())
        return {
            str(element[0])
            for item in json.loads(listing.stdout)["nftables"]
            if "map" in item
            for element in item["map"].get("elem", [])
        }


@pytest.fixture
def netns(tmp_path):
    space = NftNamespace(tmp_path)
    try:
        yield space.up()
    finally:
        space.down()


def address(n: int) -> bytes:
    return bytes.fromhex("20010db8000100000000000000000000")[:-2] + n.to_bytes(2, "big")


def lan(space: NftNamespace) -> Topology:
    topology = Topology()
    topology.create_group("lan")
    for name in ("m1", "m2"):
        topology.bind(name)
        topology.add_to_group(name, "lan", upstream=name == "m1")
        ifindex, mac = space.link(name)
        topology.update_link(name, ifindex=ifindex, mac=mac, mtu=1500)
    assert all(i.enabled for i in topology.interfaces.values())
    return topology


def learn(neighbors: NeighborCache, n: int, interface: str = "m2", now: float = 0.0) -> bytes:
    where = address(n)
    neighbors.put(
        Neighbor(
            group="lan",
            address=where,
            interface=interface,
            mac=bytes([2, 0, 0, 0, 0, n & 0xFF]),
            is_router=False,
            first_seen=now,
            last_seen=now,
            reachable_until=now + 30,
            reported_at=now,
        )
    )
    return where


def formatted(n: int) -> str:
    return f"2001:db8:1::{n:x}"


def run_async(coroutine):
    return asyncio.run(coroutine)


def test_exec_failure_turns_it_off_with_the_os_reason_and_it_comes_back(netns):
    topology, neighbors = lan(netns), NeighborCache()
    learn(neighbors, 1)

    async def scenario() -> None:
        fast = FastPath(nft=str(netns.wrapper), kernel_cleanup=False)
        await fast.start(topology, neighbors, 100.0)
        assert fast.active and fast.reason == ""
        assert netns.map_elements() == {formatted(1)}
        executable(netns.wrapper, False)
        learn(neighbors, 2)
        await fast.sync(topology, neighbors, 101.0)  # must not raise
        view = fast.view()
        assert not view["active"] and "Permission denied" in view["reason"], view
        assert view["failures"] == 1 and view["enabled"]
        # Backoff: the first retry is 1 s after the failure, and it fails again while nft
        # still cannot run; the next one is 2 s after that.
        await fast.maintain(topology, neighbors, 101.5)
        assert fast.view()["failures"] == 1  # not due yet
        await fast.maintain(topology, neighbors, 102.0)
        assert fast.view()["failures"] == 2 and not fast.active
        executable(netns.wrapper, True)
        await fast.maintain(topology, neighbors, 103.0)
        assert not fast.active  # still inside the 2 s backoff
        await fast.maintain(topology, neighbors, 104.0)
        view = fast.view()
        assert view["active"] and view["reason"] == "" and view["retry_in_s"] is None, view
        # Rebuilt whole from the state: the neighbor learned while off is there too.
        assert netns.map_elements() == {formatted(1), formatted(2)}
        await fast.remove()

    run_async(scenario())
    assert "portier" not in netns.ruleset()


def test_backoff_doubles_up_to_a_minute(netns):
    topology, neighbors = lan(netns), NeighborCache()
    fast = FastPath(nft=str(netns.wrapper), kernel_cleanup=False)
    executable(netns.wrapper, False)

    async def scenario() -> list[float]:
        now = 0.0
        await fast.start(topology, neighbors, now)
        gaps = []
        for _ in range(9):
            retry = fast.view()["retry_in_s"]
            assert retry is not None
            gaps.append(round(fast.retry_at - now, 3))
            now = fast.retry_at
            await fast.maintain(topology, neighbors, now)
        return gaps

    assert run_async(scenario()) == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert fast.view()["failures"] == 10


def test_a_rejected_ruleset_is_rebuilt_then_turned_off(netns, monkeypatch):
    topology, neighbors = lan(netns), NeighborCache()
    learn(neighbors, 1)
    fast = FastPath(nft=str(netns.wrapper), kernel_cleanup=False)

    async def scenario() -> None:
        await fast.start(topology, neighbors, 0.0)
        assert fast.active
        # A rule nft refuses (an egress device that does not exist here) in every batch:
        # the diff fails, the whole-table rebuild fails, and the fast path goes off.
        rules = fastpath_module.FastPath._neighbor_rules

        def broken(chain, rule):
            commands = rules(chain, rule)
            commands[-1]["add"]["rule"]["expr"][-1] = {"fwd": {"dev": "nosuchdev0"}}
            return commands

        monkeypatch.setattr(fastpath_module.FastPath, "_neighbor_rules", staticmethod(broken))
        learn(neighbors, 2)
        await fast.sync(topology, neighbors, 1.0)
        view = fast.view()
        assert not view["active"] and view["rebuilds"] == 1, view
        assert view["reason"].startswith("nftables rejected the ruleset"), view
        # Nothing stale is left forwarding while the workers carry everything.
        assert "portier" not in netns.ruleset()
        monkeypatch.setattr(fastpath_module.FastPath, "_neighbor_rules", staticmethod(rules))
        await fast.maintain(topology, neighbors, 2.0)
        assert fast.active
        assert netns.map_elements() == {formatted(1), formatted(2)}

    run_async(scenario())


def test_a_failed_diff_is_repaired_by_a_rebuild(netns):
    topology, neighbors = lan(netns), NeighborCache()
    learn(neighbors, 1)
    fast = FastPath(nft=str(netns.wrapper), kernel_cleanup=False)

    async def scenario() -> None:
        await fast.start(topology, neighbors, 0.0)
        # Someone deleted a chain the next diff will flush: that batch fails.
        chain = neighbor_chain("lan", address(1))
        netns.nft(
            "delete", "element", "netdev", "portier", "g_" + b"lan".hex(), "{ 2001:db8:1::1 }"
        )
        netns.nft("delete", "chain", "netdev", "portier", chain)
        learn(neighbors, 1, interface="m1")  # moved: its chain is flushed and rewritten
        await fast.sync(topology, neighbors, 1.0)
        view = fast.view()
        assert view["active"] and view["rebuilds"] == 1, view
        assert netns.map_elements() == {formatted(1)}
        assert f"chain {chain}" in netns.ruleset()

    run_async(scenario())


def test_concurrent_syncs_are_serialized(netns):
    topology, neighbors = lan(netns), NeighborCache()
    fast = FastPath(nft=str(netns.wrapper), kernel_cleanup=False)
    running = 0
    overlapped = []
    original = fast._run

    async def watched(*args, **kwargs):
        nonlocal running
        running += 1
        overlapped.append(running)
        try:
            await asyncio.sleep(0.01)  # widen the window an interleaving would use
            return await original(*args, **kwargs)
        finally:
            running -= 1

    fast._run = watched  # type: ignore[method-assign]

    async def scenario() -> None:
        await fast.start(topology, neighbors, 0.0)

        async def learn_and_sync(n: int) -> None:
            learn(neighbors, n)
            await fast.sync(topology, neighbors, 1.0)

        await asyncio.gather(
            *(learn_and_sync(n) for n in range(1, 21)),
            fast.check(topology, neighbors, 1.0),
            fast.maintain(topology, neighbors, 20.0),
        )

    run_async(scenario())
    assert max(overlapped) == 1, "two nft transactions ran at once"
    view = fast.view()
    assert view["active"] and view["rebuilds"] == 0 and view["repairs"] == 0, view
    assert netns.map_elements() == {formatted(n) for n in range(1, 21)}


def test_check_finds_and_repairs_drift_and_counts_packets_from_one_listing(netns):
    topology, neighbors = lan(netns), NeighborCache()
    learn(neighbors, 1)
    learn(neighbors, 2)
    fast = FastPath(nft=str(netns.wrapper), kernel_cleanup=False)
    listings = []
    original = fast._run

    async def counted(commands, *args):
        if commands is None and "list" in args:
            listings.append(args)
        return await original(commands, *args)

    fast._run = counted  # type: ignore[method-assign]

    async def scenario() -> None:
        await fast.start(topology, neighbors, 0.0)
        assert await fast.check(topology, neighbors, 1.0) == 0
        assert len(listings) == 1
        netns.nft(
            "delete", "element", "netdev", "portier", "g_" + b"lan".hex(), "{ 2001:db8:1::1 }"
        )
        assert netns.map_elements() == {formatted(2)}
        assert await fast.check(topology, neighbors, 2.0) >= 1
        assert fast.view()["repairs"] == 1
        assert netns.map_elements() == {formatted(1), formatted(2)}
        # The whole table gone is drift too.
        netns.nft("delete", "table", "netdev", "portier")
        assert await fast.check(topology, neighbors, 3.0) >= 1
        assert fast.active and netns.map_elements() == {formatted(1), formatted(2)}
        # The periodic check runs from maintain, every 10 s, once per listing.
        listings.clear()
        await fast.maintain(topology, neighbors, 5.0)
        assert listings == []
        await fast.maintain(topology, neighbors, 13.0)
        assert len(listings) == 1 and fast.view()["kernel_packets"] == 0

    run_async(scenario())


def test_set_enabled_removes_and_rebuilds_the_table(netns):
    topology, neighbors = lan(netns), NeighborCache()
    learn(neighbors, 1)
    fast = FastPath(nft=str(netns.wrapper), kernel_cleanup=False)

    async def scenario() -> None:
        await fast.start(topology, neighbors, 0.0)
        await fast.set_enabled(False, topology, neighbors, 1.0)
        view = fast.view()
        assert not view["enabled"] and not view["active"], view
        assert view["reason"] == "disabled by configuration"
        assert "portier" not in netns.ruleset()
        await fast.maintain(topology, neighbors, 100.0)  # no retry while disabled
        assert "portier" not in netns.ruleset()
        await fast.sync(topology, neighbors, 101.0)
        assert "portier" not in netns.ruleset()
        await fast.set_enabled(True, topology, neighbors, 102.0)
        view = fast.view()
        assert view["enabled"] and view["active"] and view["reason"] == "", view
        assert netns.map_elements() == {formatted(1)}

    run_async(scenario())


def test_disabled_at_start_programs_nothing_and_clears_leftovers(netns):
    topology, neighbors = lan(netns), NeighborCache()
    learn(neighbors, 1)
    # What a crashed run with the fast path on left behind.
    netns.nft("add", "table", "netdev", "portier")
    netns.nft("add", "chain", "netdev", "portier", "leftover")
    fast = FastPath(enabled=False, nft=str(netns.wrapper), kernel_cleanup=False)
    run_async(fast.start(topology, neighbors, 0.0))
    view = fast.view()
    assert view["reason"] == "disabled by configuration" and not view["active"], view
    assert view["retry_in_s"] is None and view["failures"] == 0
    assert "portier" not in netns.ruleset()
    run_async(fast.sync(topology, neighbors, 1.0))
    assert "portier" not in netns.ruleset()


def test_a_missing_nft_is_retried_too(tmp_path):
    fast = FastPath(nft=str(tmp_path / "nft"), kernel_cleanup=False)
    topology, neighbors = Topology(), NeighborCache()
    run_async(fast.start(topology, neighbors, 0.0))
    view = fast.view()
    assert not view["active"] and view["reason"] == "nft not found" and view["enabled"]
    assert view["retry_in_s"] is not None


def test_an_nft_that_hangs_is_killed_and_turns_it_off(netns, tmp_path):
    topology, neighbors = lan(netns), NeighborCache()
    learn(neighbors, 1)
    hanging = tmp_path / "hanging-nft"
    hanging.write_text('#!/bin/sh\necho $$ > "$0.pid"\nexec sleep 30\n')
    executable(hanging, True)
    fast = FastPath(nft=str(hanging), kernel_cleanup=False, nft_timeout_s=0.5)
    started = time.monotonic()
    run_async(fast.start(topology, neighbors, 0.0))
    assert time.monotonic() - started < 5
    view = fast.view()
    assert not view["active"] and "did not finish within 0.5 s" in view["reason"], view
    pid = int(Path(f"{hanging}.pid").read_text())
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5, "the hung nft to be gone")
