"""Readiness and the systemd watchdog, told honestly.

portierd is ready once every bound interface's worker has had its snapshot (READY=1,
sent once), and stays ready only while every supervised loop is healthy.  WATCHDOG=1
is sent from the timer loop, and only while every loop is healthy: a daemon with a dead
or failing loop stops petting the watchdog and systemd restarts it.  STATUS= says what
systemd should show: workers forwarding, or which loop is unhealthy.  This module only
reads the pool and the loops; it changes neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from portier.supervisor.loops import LoopSupervisor
from portier.supervisor.sdnotify import Notifier
from portier.supervisor.workerpool import WorkerPool

log = logging.getLogger("portier.supervisor")


class Readiness:
    def __init__(
        self,
        pool: WorkerPool,
        loops: LoopSupervisor,
        notifier: Notifier,
        *,
        watchdog_s: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.loops = loops
        self.notifier = notifier
        self.watchdog_s = watchdog_s
        self.clock = clock
        self.workers_ready = False  # every worker had its snapshot once
        self.last_status = ""
        self.next_watchdog = 0.0

    @property
    def ready(self) -> bool:
        return self.workers_ready and self.loops.healthy()

    def summary(self) -> str:
        unhealthy = self.loops.unhealthy()
        if unhealthy:
            return f"unhealthy: {', '.join(unhealthy)}"
        handles = self.pool.handles.values()
        connected = sum(1 for h in handles if h.connected)
        return f"{connected}/{len(self.pool.handles)} workers forwarding"

    def check(self) -> None:
        """After any change of workers or loops: READY=1 once, STATUS= when it changed."""
        handles = self.pool.handles.values()
        summary = self.summary()
        if not self.workers_ready and all(h.connected for h in handles):
            self.workers_ready = True
            self.notifier.ready(summary)
            log.info("ready: %s", summary)
        elif self.workers_ready and summary != self.last_status:
            self.notifier.status(summary)
        self.last_status = summary

    def tick(self, now: float) -> None:
        """From the timer loop: WATCHDOG=1 when due, and only while every loop is healthy."""
        self.check()
        if self.watchdog_s is None or now < self.next_watchdog:
            return
        if self.loops.healthy(now):
            self.notifier.watchdog()
            self.next_watchdog = now + self.watchdog_s
