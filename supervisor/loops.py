"""Supervised loops: every long-running task of portierd, restarted when it fails, and their health.

A loop is a coroutine function meant to run until the daemon stops (the worker channel's
receive loop, the timers, the control servers, the ZAP handler).  `LoopSupervisor.start`
runs it under a wrapper: an exception other than cancellation (or the loop simply
returning) is logged with its traceback, counted per loop, and the loop runs again after
a backoff, 0.1 s doubling to 5 s, back to 0.1 s once it has run a minute without failing.
A loop that fails more than `intensity` times within `period_s`, or one started with
`fatal=True` (its restart would not be safe), is beyond restarting here: the supervisor
asks the daemon to exit non-zero, so that systemd starts it afresh.  A half-dead daemon,
serving some loops while another is gone, is what this module exists to rule out.

Health is what readiness and the systemd watchdog are built on: a loop is healthy while
it runs and is not in failure backoff; a loop that beats (the timers, every tick) is
healthy only while its last beat is recent.  One-off background tasks go through
`background()`, which logs their exceptions instead of losing them.  This module never
touches the daemon's state and never swallows a cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("portier.supervisor")

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
STABLE_AFTER_S = 60.0
INTENSITY = 10
PERIOD_S = 60.0
EXIT_LOOP_FAILED = 1

LoopBody = Callable[[], Awaitable[None]]


@dataclass
class LoopHealth:
    """One loop as the supervisor sees it."""

    name: str
    beat_within_s: float | None = None  # a beating loop must beat this often to be healthy
    running: bool = False
    backing_off: bool = False
    restarts: int = 0
    last_error: str | None = None
    last_beat: float = 0.0
    started_at: float = 0.0
    failures: deque[float] = field(default_factory=deque)

    def healthy(self, now: float) -> bool:
        if not self.running or self.backing_off:
            return False
        if self.beat_within_s is None:
            return True
        return now - self.last_beat <= self.beat_within_s


class LoopSupervisor:
    """Runs loops and background tasks, restarts what fails, and answers for their health."""

    def __init__(
        self,
        *,
        on_fatal: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        intensity: int = INTENSITY,
        period_s: float = PERIOD_S,
    ) -> None:
        self.on_fatal = on_fatal
        self.clock = clock
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.intensity = intensity
        self.period_s = period_s
        self.loops: dict[str, LoopHealth] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.background_failures = 0

    # --- loops ------------------------------------------------------------------------

    def start(
        self,
        name: str,
        body: LoopBody,
        *,
        beat_within_s: float | None = None,
        fatal: bool = False,
    ) -> asyncio.Task[None]:
        health = self.loops.setdefault(name, LoopHealth(name, beat_within_s))
        health.beat_within_s = beat_within_s
        task = asyncio.create_task(self._supervise(health, body, fatal), name=f"loop:{name}")
        self._tasks[name] = task
        return task

    async def _supervise(self, health: LoopHealth, body: LoopBody, fatal: bool) -> None:
        backoff_s = self.backoff_min_s
        while True:
            health.running, health.backing_off = True, False
            health.started_at = health.last_beat = self.clock()
            try:
                await body()
            except asyncio.CancelledError:
                health.running = False
                raise
            except Exception as exc:
                log.exception("loop %s failed", health.name)
                health.last_error = f"{type(exc).__name__}: {exc}"
            else:
                log.error("loop %s ended by itself", health.name)
                health.last_error = "ended unexpectedly"
            now = self.clock()
            health.restarts += 1
            if now - health.started_at >= STABLE_AFTER_S:
                backoff_s = self.backoff_min_s
            health.failures.append(now)
            while health.failures and now - health.failures[0] > self.period_s:
                health.failures.popleft()
            if fatal or len(health.failures) > self.intensity:
                health.running = False
                log.critical(
                    "loop %s cannot be restarted safely (%d failures in %.0f s): exiting",
                    health.name,
                    len(health.failures),
                    self.period_s,
                )
                self.on_fatal(EXIT_LOOP_FAILED)
                return
            health.backing_off = True
            log.warning("loop %s restarts in %.1f s", health.name, backoff_s)
            await asyncio.sleep(backoff_s)
            backoff_s = min(self.backoff_max_s, backoff_s * 2)

    def beat(self, name: str) -> None:
        """A beating loop made progress."""
        health = self.loops.get(name)
        if health is not None:
            health.last_beat = self.clock()

    def unhealthy(self, now: float | None = None) -> list[str]:
        now = self.clock() if now is None else now
        return sorted(name for name, health in self.loops.items() if not health.healthy(now))

    def healthy(self, now: float | None = None) -> bool:
        return not self.unhealthy(now)

    def view(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "loops": {
                name: {
                    "healthy": health.healthy(now),
                    "restarts": health.restarts,
                    "last_error": health.last_error,
                }
                for name, health in sorted(self.loops.items())
            }
        }

    # --- one-off tasks ----------------------------------------------------------------

    def background(self, coroutine: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run a one-off task whose failure is logged, never lost."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(lambda done: self._finished(done, what))
        return task

    def _finished(self, task: asyncio.Task[Any], what: str) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.background_failures += 1
            log.error("background task %s failed", what, exc_info=exc)

    async def stop(self, background_timeout_s: float = 5.0) -> None:
        """Cancel every loop; let background tasks (a worker being stopped) finish first."""
        loops = list(self._tasks.values())
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for health in self.loops.values():
            health.running = False
        pending = list(self._background)
        if pending:
            _, late = await asyncio.wait(pending, timeout=background_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
