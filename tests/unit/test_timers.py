"""The timers, readiness and the committer, driven with an injected clock: no sleeping."""

import asyncio
import socket

from supervisor_parts import Broadcasts, RecordingFastPath, ScriptedSaver, committer_for, lan_config

from portier.neighbors import Neighbor
from portier.status import OK, Code, Status
from portier.supervisor.claims import ClaimDesk
from portier.supervisor.commit import with_save_outcome
from portier.supervisor.health import Readiness
from portier.supervisor.loops import LoopSupervisor
from portier.supervisor.sdnotify import Notifier
from portier.supervisor.state import ProxyState
from portier.supervisor.stats import SupervisorStats
from portier.supervisor.timers import BEAT_WITHIN_S, LOOP_NAME, Timers
from portier.supervisor.workerpool import WorkerPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Channel:
    def __init__(self) -> None:
        self.broadcasts = Broadcasts()

    async def broadcast(self, changes, exclude=None):
        await self.broadcasts(changes, exclude)


class Rig:
    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        config = lan_config(tmp_path)
        self.state = ProxyState(config)
        self.state.apply_config_groups(config)
        self.fastpath, self.saver, self.channel = RecordingFastPath(), ScriptedSaver(), Channel()
        self.committer = committer_for(
            self.state,
            fastpath=self.fastpath,
            saver=self.saver,
            broadcast=self.channel.broadcasts,
            clock=self.clock,
        )
        self.pool = WorkerPool(
            "ipc:///x", worker_args=[], on_state=lambda h: None, clock=self.clock
        )
        self.loops = LoopSupervisor(on_fatal=lambda code: None, clock=self.clock)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify.sock"))
        self.notify.setblocking(False)
        notifier = Notifier(str(tmp_path / "notify.sock"))
        self.readiness = Readiness(
            self.pool, self.loops, notifier, watchdog_s=1.0, clock=self.clock
        )
        self.timers = Timers(
            self.state,
            self.committer,
            self.channel,  # type: ignore[arg-type]
            self.pool,
            lambda now: self.fastpath.maintain(None, None, now),
            self.readiness,
            self.loops,
            SupervisorStats(),
            ClaimDesk(
                self.channel,  # type: ignore[arg-type]
                self.committer,
                SupervisorStats(),
                None,  # type: ignore[arg-type]  # nothing here moves an address
            ),
            clock=self.clock,
        )

    def notifications(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.notify.recv(4096))
            except BlockingIOError:
                return out

    async def ticks(self, count: int) -> None:
        for _ in range(count):
            self.clock.now += 0.5
            await self.timers.tick(self.clock.now)


def test_expiry_is_replicated_saved_at_its_cadence_and_programmed(tmp_path):
    rig = Rig(tmp_path)
    rig.state.neighbors.put(
        Neighbor("lan", bytes(16), "vm1", b"\x02" * 6, False, 0.0, 1000.0, 1010.0)
    )

    async def scenario() -> None:
        await rig.ticks(1)
        assert not rig.channel.broadcasts.sent
        rig.clock.now += rig.state.neighbors.lifetime_s
        await rig.timers.tick(rig.clock.now)
        assert rig.channel.broadcasts.sent[-1][0]["op"] == "neighbor_removed"
        assert ("sync", rig.clock.now) in rig.fastpath.calls
        assert ("maintain", rig.clock.now) in rig.fastpath.calls
        assert len(rig.saver.saves) == 1 and not rig.committer.neighbors_dirty
        rig.committer.neighbors_dirty = True  # as a learned report does
        await rig.ticks(1)
        assert len(rig.saver.saves) == 1  # neighbors are saved at most every 2 s
        await rig.ticks(3)
        assert len(rig.saver.saves) == 2 and not rig.committer.neighbors_dirty

    asyncio.run(scenario())


def test_a_failed_save_is_retried_until_it_catches_up(tmp_path):
    rig = Rig(tmp_path)
    rig.saver.error = "No space left on device"

    async def scenario() -> None:
        saved = await rig.committer.commit("group_create", group="x")
        assert saved.text() == "No space left on device"
        assert rig.committer.neighbors_dirty  # kept dirty: the next write catches up
        await rig.ticks(5)
        assert len(rig.saver.saves) == 2
        rig.saver.error = None
        await rig.ticks(5)
        assert len(rig.saver.saves) == 3 and not rig.committer.neighbors_dirty
        await rig.ticks(5)
        assert len(rig.saver.saves) == 3

    asyncio.run(scenario())


def test_an_operation_whose_save_failed_still_succeeds_and_says_why():
    failed = Status(Code.UNEXPECTED_FAILURE, "No space left on device")
    reply = with_save_outcome(OK, failed)
    assert reply.ok and reply.text() == "state could not be saved: No space left on device"
    assert with_save_outcome(OK, OK) == OK
    refused = Status(Code.DOES_NOT_EXIST, "no such group")
    assert with_save_outcome(refused, failed) == refused


def test_watchdog_and_readiness_only_while_every_loop_is_healthy(tmp_path):
    rig = Rig(tmp_path)

    async def scenario() -> None:
        rig.loops.start(LOOP_NAME, asyncio.Event().wait, beat_within_s=BEAT_WITHIN_S)
        failing = asyncio.Event()

        async def control() -> None:
            await failing.wait()
            raise OSError("control socket gone")

        rig.loops.start("control", control)
        await asyncio.sleep(0)
        await rig.ticks(1)
        assert rig.readiness.ready
        sent = rig.notifications()
        assert sent[0].startswith(b"READY=1") and b"WATCHDOG=1" in sent
        failing.set()
        await asyncio.sleep(0.01)  # the control loop fails and backs off
        await rig.ticks(4)
        sent = rig.notifications()
        assert b"WATCHDOG=1" not in sent
        assert b"STATUS=unhealthy: control" in sent
        assert not rig.readiness.ready
        await rig.loops.stop()

    asyncio.run(scenario())


def test_a_timer_loop_that_stops_beating_stops_the_watchdog(tmp_path):
    rig = Rig(tmp_path)

    async def scenario() -> None:
        rig.loops.start(LOOP_NAME, asyncio.Event().wait, beat_within_s=BEAT_WITHIN_S)
        await asyncio.sleep(0)
        await rig.ticks(1)
        rig.notifications()
        rig.clock.now += BEAT_WITHIN_S + 1  # stuck inside one tick
        rig.readiness.tick(rig.clock.now)
        assert b"WATCHDOG=1" not in rig.notifications()
        assert rig.loops.unhealthy() == [LOOP_NAME] and not rig.readiness.ready
        await rig.loops.stop()

    asyncio.run(scenario())
