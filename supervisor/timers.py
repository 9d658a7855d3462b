"""The supervisor's timers: one tick a second does everything that is due.

Neighbor and loop-disable expiry (replicated and announced), owner checks that ran out
(claims.py carries out the moves), the fast path (dirty state
programmed, `maintain` for retries and the periodic check), saving learned neighbors at
most every 2 s, the workers' missed heartbeats, and the systemd watchdog.  The workers'
heartbeats are answered as they come (reports.py), so no timer sends N messages.  The
cost of a tick grows with the number of workers, and ticks come once a second whatever
that number.  Newly
learned neighbors do not wait for the tick: a poke (`poke`, from the committer) has the
fast path programmed FASTPATH_BATCH_S later, in one batch with whatever else came
meanwhile.  The tick
beats the loop supervisor's health for the timer loop: a tick that hangs is a loop that
stops being healthy.  Time comes from an injected clock, so a test drives `tick(now)`
without sleeping.  Nothing here decides state: it asks the state what expired.
"""

from __future__ import annotations

import asyncio
import contextlib
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

TICK_S = 1.0
NEIGHBOR_SAVE_S = 2.0
FASTPATH_BATCH_S = 0.005
LOOP_NAME = "timers"
# The tick beats every second; a loop that has not for this long is stuck.
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
        self.last_save_attempt = clock()
        self.poked = asyncio.Event()

    def poke(self) -> None:
        self.poked.set()

    async def run(self) -> None:
        next_tick = self.clock() + TICK_S
        while True:
            now = self.clock()
            timeout_s = min(max(0.0, next_tick - now), self.sleep_s(now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.poked.wait(), timeout_s)
            if self.poked.is_set():
                self.poked.clear()
                await asyncio.sleep(FASTPATH_BATCH_S)  # reports that come together, together
                if self.committer.fastpath_dirty:
                    await self.committer.sync_fastpath()
            now = self.clock()
            due = self.state.checks.next_deadline()
            if now >= next_tick or (due is not None and now >= due):
                next_tick = now + TICK_S
                await self.tick(now)

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
