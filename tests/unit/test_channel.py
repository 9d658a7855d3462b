"""The worker channel and the reports, over a real ZeroMQ ipc pair: a worker's side in the test."""

import asyncio
import os

import pytest
import zmq
import zmq.asyncio
from supervisor_parts import committer_for, lan_config

from portier import schema
from portier.replication import change_flush, change_topology, topology_from_wire
from portier.supervisor.announce import Announcer
from portier.supervisor.channel import WorkerChannel
from portier.supervisor.claims import ClaimDesk
from portier.supervisor.reports import WorkerReports
from portier.supervisor.state import ProxyState
from portier.supervisor.stats import SupervisorStats
from portier.supervisor.workerpool import WorkerHandle, WorkerPool, WorkerState

MAC = b"\x02\x00\x00\x00\x01\x01"
MAC2 = b"\x02\x00\x00\x00\x01\x02"


def hello(interface: str, pid: int) -> dict:
    return {
        "kind": "hello",
        "interface": interface,
        "pid": pid,
        "ifindex": 7,
        "mac": MAC,
        "mtu": 1500,
        "addresses": [],
        "up": True,
    }


class Rig:
    """The supervisor's channel bound on ipc, and one DEALER per worker interface."""

    def __init__(self, tmp_path) -> None:
        self.context = zmq.asyncio.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.endpoint = f"ipc://{tmp_path}/workers.sock"
        self.router.bind(self.endpoint)
        config = lan_config(tmp_path)
        self.state = ProxyState(config)
        self.state.apply_config_groups(config)
        self.pool = WorkerPool(self.endpoint, worker_args=[], on_state=lambda h: None)
        for name in ("up0", "vm1", "vm2"):
            # As if spawned: the pool knows the interface, no process needed to talk.
            self.pool.handles[name] = WorkerHandle(name, state=WorkerState.STARTING)
        self.channel = WorkerChannel(self.router, self.state, self.pool)
        self.committer = committer_for(self.state)
        self.stats = SupervisorStats()
        self.connected = 0
        self.announce = True
        self.announcer = Announcer(
            self.state.topology, self.channel, self.stats, lambda: self.announce
        )
        self.reports = WorkerReports(
            self.state,
            self.pool,
            self.channel,
            self.committer,
            self.stats,
            ClaimDesk(self.channel, self.committer, self.stats, self.announcer),
            self.announcer,
            on_connected=self._connected,
        )
        self.dealers: dict[str, zmq.asyncio.Socket] = {}

    def _connected(self) -> None:
        self.connected += 1

    def worker(self, interface: str) -> zmq.asyncio.Socket:
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, interface.encode())
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.endpoint)
        self.dealers[interface] = dealer
        return dealer

    async def receive(self, dealer: zmq.asyncio.Socket) -> dict:
        raw = await asyncio.wait_for(dealer.recv(), 5)
        return schema.decode_worker(raw)

    def close(self) -> None:
        for dealer in self.dealers.values():
            dealer.close(0)
        self.router.close(0)
        self.context.term()


@pytest.fixture
def rig(tmp_path):
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def test_hello_gets_a_snapshot_and_the_reported_pid_is_never_the_signalled_one(rig):
    async def scenario() -> dict:
        loop = asyncio.create_task(rig.channel.receive(rig.reports.handle))
        vm1 = rig.worker("vm1")
        handle = rig.pool.handles["vm1"]
        handle.pid = 4242  # the pid the pool spawned
        await vm1.send(schema.encode(hello("vm1", os.getpid())))
        snapshot = await rig.receive(vm1)
        loop.cancel()
        return snapshot

    snapshot = asyncio.run(scenario())
    handle = rig.pool.handles["vm1"]
    assert snapshot["kind"] == "snapshot" and snapshot["seq"] == 0
    assert handle.state == WorkerState.RUNNING and handle.connected
    assert handle.pid == 4242 and handle.reported_pid == os.getpid()
    assert rig.state.topology.interfaces["vm1"].ifindex == 7 and rig.connected == 1


def test_malformed_messages_cost_only_themselves(rig):
    async def scenario() -> dict:
        loop = asyncio.create_task(rig.channel.receive(rig.reports.handle))
        vm1 = rig.worker("vm1")
        await vm1.send(b"\xc1 not msgpack")
        await vm1.send(schema.encode({"kind": "no-such-kind"}))
        await vm1.send(schema.encode({**hello("vm1", 1), "mac": 5}))  # wrong type
        await vm1.send_multipart([b"extra", b"frames"])
        await vm1.send(schema.encode(hello("vm1", 1)))
        reply = await rig.receive(vm1)
        assert not loop.done()
        loop.cancel()
        return reply

    assert asyncio.run(scenario())["kind"] == "snapshot"


def test_a_worker_speaks_only_for_itself(rig):
    async def scenario() -> None:
        loop = asyncio.create_task(rig.channel.receive(rig.reports.handle))
        intruder = rig.worker("vm1")
        await intruder.send(schema.encode(hello("vm2", 1)))  # claims another interface
        stranger = rig.worker("eth9")  # not bound, never spawned
        await stranger.send(schema.encode(hello("eth9", 1)))
        await intruder.send(schema.encode(hello("vm1", 1)))
        assert (await rig.receive(intruder))["kind"] == "snapshot"
        loop.cancel()

    asyncio.run(scenario())
    assert rig.pool.handles["vm2"].state == WorkerState.STARTING
    assert "eth9" not in rig.pool.handles


def test_an_unexpected_error_ends_the_receive_loop_for_its_supervisor(rig):
    async def broken(interface: str, message: dict) -> None:
        raise RuntimeError("bug in a handler")

    async def scenario() -> None:
        loop = asyncio.create_task(rig.channel.receive(broken))
        vm1 = rig.worker("vm1")
        await vm1.send(schema.encode(hello("vm1", 1)))
        with pytest.raises(RuntimeError, match="bug in a handler"):
            await asyncio.wait_for(loop, 5)

    asyncio.run(scenario())


def test_learned_neighbors_are_relayed_to_the_others_and_marked_for_saving(rig):
    async def scenario() -> list[dict]:
        loop = asyncio.create_task(rig.channel.receive(rig.reports.handle))
        sockets = {name: rig.worker(name) for name in ("up0", "vm1")}
        for name, sock in sockets.items():
            await sock.send(schema.encode(hello(name, 1)))
            assert (await rig.receive(sock))["kind"] == "snapshot"
        neighbor = {
            "group": "lan",
            "address": bytes(range(16)),
            "interface": "vm1",
            "mac": MAC,
            "is_router": False,
            "first_seen": 1.0,
            "last_seen": 1.0,
            "reachable_until": 31.0,
        }
        await sockets["vm1"].send(schema.encode({"kind": "learned", "neighbors": [neighbor]}))
        received = []
        while not any(c["op"] == "neighbor" for m in received for c in m.get("changes", [])):
            received.append(await rig.receive(sockets["up0"]))  # vm1's link facts come first
        loop.cancel()
        return received

    deltas = asyncio.run(scenario())
    assert [m["seq"] for m in deltas] == list(range(1, len(deltas) + 1))  # no gap
    assert deltas[-1]["changes"][0]["neighbor"]["address"] == bytes(range(16))
    assert rig.committer.neighbors_dirty and rig.committer.fastpath_dirty
    assert rig.stats.learned["lan"] == 1


def _neighbor(interface: str, mac: bytes, seen: float) -> dict:
    return {
        "group": "lan",
        "address": bytes(range(16)),
        "interface": interface,
        "mac": mac,
        "is_router": False,
        "first_seen": seen,
        "last_seen": seen,
        "reachable_until": 0.0,
    }


async def _next(rig: Rig, sock, wanted) -> dict:
    while True:
        message = await rig.receive(sock)
        if wanted(message):
            return message


def _names(message: dict, address: bytes) -> bool:
    return any(
        c["op"] == "neighbor" and c["neighbor"]["address"] == address
        for c in message.get("changes", [])
    )


def _checking(message: dict) -> bool:
    return any(
        c["op"] == "neighbor" and c["neighbor"].get("check_until")
        for c in message.get("changes", [])
    )


def test_an_arriving_guest_address_is_announced_on_the_upstream_once(rig):
    def learned(address: bytes, seen: float) -> bytes:
        item = _neighbor("vm1", MAC, seen) | {"address": address}
        return schema.encode({"kind": "learned", "neighbors": [item]})

    def announced(message: dict) -> bool:
        return message["kind"] == "command" and message["command"] == "announce"

    first, second, third = (bytes([0x20, 1, 0xD, 0xB8] + [0] * 11 + [n]) for n in (1, 2, 3))

    async def scenario() -> list[dict]:
        loop = asyncio.create_task(rig.channel.receive(rig.reports.handle))
        sockets = {name: rig.worker(name) for name in ("up0", "vm1")}
        for name, sock in sockets.items():
            await sock.send(schema.encode(hello(name, 1)))
            assert (await rig.receive(sock))["kind"] == "snapshot"
        seen = []
        await sockets["vm1"].send(learned(first, 1.0))
        seen.append(await _next(rig, sockets["up0"], announced))
        await sockets["vm1"].send(learned(first, 2.0))  # seen again, same member: quiet
        rig.announce = False
        await sockets["vm1"].send(learned(second, 2.0))  # switched off: quiet
        await _next(rig, sockets["up0"], lambda m: _names(m, second))
        rig.announce = True
        await sockets["vm1"].send(learned(third, 3.0))
        seen.append(await _next(rig, sockets["up0"], announced))
        loop.cancel()
        return seen

    commands = asyncio.run(scenario())
    assert [c["args"]["address"] for c in commands] == [first, third]
    assert commands[0]["args"] == {"group": "lan", "address": first, "router": False}
    assert rig.stats.announcements[("vm1", "sent")] == 2


@pytest.mark.parametrize("owner", ["answers", "is silent"])
def test_a_claim_for_an_owned_address_is_checked_with_the_owners_worker(rig, owner):
    """vm2 claims vm1's address: every replica shows the check, vm1's worker is asked to
    probe; vm1 reporting its owner refuses the claim, silence moves the address."""
    now = [100.0]
    rig.reports.clock = lambda: now[0]

    async def scenario() -> None:
        loop = asyncio.create_task(rig.channel.receive(rig.reports.handle))
        sockets = {name: rig.worker(name) for name in ("vm1", "vm2")}
        for name, sock in sockets.items():
            await sock.send(schema.encode(hello(name, 1)))
            await _next(rig, sock, lambda m: m["kind"] == "snapshot")
        await sockets["vm1"].send(
            schema.encode({"kind": "learned", "neighbors": [_neighbor("vm1", MAC, 99.0)]})
        )
        await _next(rig, sockets["vm2"], lambda m: m.get("changes"))
        claim = {"kind": "claim", "group": "lan", "address": bytes(range(16)), "mac": MAC2}
        await sockets["vm2"].send(schema.encode(claim))
        await _next(rig, sockets["vm2"], _checking)  # the claimant's replica too
        await _next(rig, sockets["vm1"], _checking)
        probe = await _next(rig, sockets["vm1"], lambda m: m["kind"] == "command")
        assert probe["command"] == "probe"
        assert probe["args"] == {"group": "lan", "address": bytes(range(16))}
        if owner == "answers":
            answer = _neighbor("vm1", MAC, 100.3)
            await sockets["vm1"].send(schema.encode({"kind": "learned", "neighbors": [answer]}))
            await _next(rig, sockets["vm2"], lambda m: m.get("changes") and not _checking(m))
        else:
            now[0] = 101.0
            changes, settled = rig.state.settle_due(now[0])
            await rig.claims.carry_out(changes, settled, [])
        loop.cancel()

    rig.claims = ClaimDesk(rig.channel, rig.committer, rig.stats, rig.announcer)
    rig.reports.claims = rig.claims
    asyncio.run(scenario())
    entry = rig.state.neighbors.get("lan", bytes(range(16)))
    assert entry is not None and not entry.check_until
    if owner == "answers":
        assert (entry.interface, entry.mac) == ("vm1", MAC)
        assert rig.stats.claims == {("vm2", "refused"): 1}
    else:
        assert (entry.interface, entry.mac) == ("vm2", MAC2)
        assert rig.stats.claims == {("vm2", "moved"): 1}
    assert rig.stats.probes == {"vm1": 1}


def test_broadcasts_wait_for_an_idle_loop_and_go_out_as_one_delta_in_order(rig):
    """Many broadcasts in a row reach a worker as one delta with one topology op (the
    latest), and before anything else sent to it afterwards."""

    async def scenario() -> list[dict]:
        loop = asyncio.create_task(rig.channel.receive(rig.reports.handle))
        vm1 = rig.worker("vm1")
        await vm1.send(schema.encode(hello("vm1", 1)))
        assert (await rig.receive(vm1))["kind"] == "snapshot"
        vm2 = rig.state.topology.interfaces["vm2"]
        for mtu in (1400, 1300):
            vm2.mtu = mtu
            await rig.channel.broadcast([change_topology(rig.state.topology)])
            await rig.channel.broadcast([change_flush("lan")])
        await rig.channel.send("vm1", {"kind": "heartbeat"})
        received = [await rig.receive(vm1), await rig.receive(vm1)]
        loop.cancel()
        return received

    delta, heartbeat = asyncio.run(scenario())
    assert heartbeat["kind"] == "heartbeat"
    assert delta["kind"] == "delta" and delta["seq"] == 1
    ops = [change["op"] for change in delta["changes"]]
    assert ops == ["topology", "flush", "flush"], ops
    assert topology_from_wire(delta["changes"][0]["topology"]).interfaces["vm2"].mtu == 1300


def test_a_heartbeat_is_answered_and_an_unchanged_one_keeps_the_counters(rig):
    """The answer is the worker's proof that the supervisor lives (no timer sends the
    workers anything); `next_s` moves the deadline for the worker's next word."""

    async def scenario() -> list[dict]:
        loop = asyncio.create_task(rig.channel.receive(rig.reports.handle))
        vm1 = rig.worker("vm1")
        await vm1.send(schema.encode(hello("vm1", os.getpid())))
        await rig.receive(vm1)  # the snapshot
        answers = []
        beat = {"kind": "heartbeat", "seq": 0, "next_s": 1.0, "counters": {"rx": 5}}
        await vm1.send(schema.encode(beat))
        answers.append(await rig.receive(vm1))
        await vm1.send(schema.encode({"kind": "heartbeat", "seq": 0, "next_s": 16.0}))
        answers.append(await rig.receive(vm1))
        loop.cancel()
        return answers

    answers = asyncio.run(scenario())
    handle = rig.pool.handles["vm1"]
    assert [a["kind"] for a in answers] == ["heartbeat", "heartbeat"]
    assert handle.counters == {"rx": 5}, "an unchanged beat wiped the counters"
    assert handle.quiet_s == 16.0
