"""The supervisor's timers: one tick every 0.5 s does everything that is due.

Neighbor and loop-disable expiry (replicated and announced), owner checks that ran out
(claims.py carries out the moves), the fast path (dirty state
programmed, `maintain` for retries and the periodic check), saving learned neighbors at
most every 2 s, the workers' heartbeats both ways, and the systemd watchdog.  The tick
beats the loop supervisor's health for the timer loop: a tick that hangs is a loop that
stops being healthy.  Time comes from an injected clock, so a test drives `tick(now)`
without sleeping.  Nothing here decides state: it asks the state what expired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from portier.supervisor.channel import WorkerChannel
from portier.supervisor.claims import ClaimDesk
from portier.supervisor.commit import Committer
from portier.supervisor.health import Readiness
from portier.supervisor.loops import LoopSupervisor
from portier.supervisor.state import ProxyState
from portier.supervisor.stats import SupervisorStats
from portier.supervisor.workerpool import WorkerPool

TICK_S = 0.5
HEARTBEAT_S = 1.0
NEIGHBOR_SAVE_S = 2.0
LOOP_NAME = "timers"
# The tick beats every 0.5 s; a loop that has not for this long is stuck.
BEAT_WITHIN_S = 5.0


class Timers:
    def __init__(
        self,
        state: ProxyState,
        committer: Committer,
        channel: WorkerChannel,
        pool: WorkerPool,
        fastpath_maintain: Callable[[float], Awaitable[None]],
        readiness: Readiness,
        loops: LoopSupervisor,
        stats: SupervisorStats,
        claims: ClaimDesk,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.committer = committer
        self.channel = channel
        self.pool = pool
        self.fastpath_maintain = fastpath_maintain
        self.readiness = readiness
        self.loops = loops
        self.stats = stats
        self.claims = claims
        self.clock = clock
        self.next_heartbeat = 0.0
        self.last_save_attempt = clock()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.sleep_s(self.clock()))
            await self.tick(self.clock())

    def sleep_s(self, now: float) -> float:
        """One tick's wait, shorter when an owner check runs out sooner (a move is due)."""
        due = self.state.checks.next_deadline()
        return TICK_S if due is None else min(TICK_S, max(0.01, due - now))

    async def tick(self, now: float) -> None:
        self.loops.beat(LOOP_NAME)
        self.readiness.tick(now)
        await self._expire(now)
        changes, settled = self.state.settle_due(now)
        if settled:
            await self.claims.carry_out(changes, settled, [])
        if self.committer.fastpath_dirty:
            await self.committer.sync_fastpath()
        await self.fastpath_maintain(now)
        if self.committer.neighbors_dirty and now - self.last_save_attempt >= NEIGHBOR_SAVE_S:
            self.last_save_attempt = now
            await self.committer.save()
        self.pool.check_heartbeats(now)
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + HEARTBEAT_S
            await self.channel.heartbeat()
        self.loops.beat(LOOP_NAME)

    async def _expire(self, now: float) -> None:
        changes = self.state.expire(now)
        if not changes:
            return
        self.committer.neighbors_dirty = True
        self.committer.fastpath_dirty = True
        await self.channel.broadcast(changes)
        for change in changes:
            if change["op"] == "neighbor_removed":
                self.stats.expired[change["group"]] += 1
                self.committer.publish(
                    "neighbor", change="expired", group=change["group"], address=change["address"]
                )
