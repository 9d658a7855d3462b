"""Worker lifecycle: spawn (forked by the zygote, or by exec), watch, restart with backoff,
give up when flapping.

One-for-one supervision: each bound interface has one worker process.  A worker that
exits, or stays silent HEARTBEAT_TIMEOUT_S past the next heartbeat it promised (an idle
worker beats ever less often, up to every 30 s; workers/main.py), is restarted at once
the first time (a fork takes milliseconds: the guest's ND comes back in tens of them),
then after an exponential backoff (0.1 s doubling up to 30 s; a worker that ran for a
minute starts again from at once).  More than `intensity` restarts within `period_s`
marks the interface FAILED: it is reported and left alone until an operator acts, never
restarted in a tight loop.  Signals go to the process the pool spawned, never to a pid
a worker reports.  When the supervisor itself was not running for a while (stopped,
starved), silence from the workers says nothing about them: the heartbeat deadlines
start afresh instead of every worker being killed.
A worker is asked of the zygote first (supervisor/zygote.py); when it is down or does not
answer, the worker is started by exec.  Either way it is watched and signalled through
the handle the spawn returned (an asyncio Process, or a pidfd the zygote client holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

log = logging.getLogger("portier.supervisor")

FIRST_RESTART_S = 0.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
HEARTBEAT_TIMEOUT_S = 5.0
# Heartbeat checks come every tick (1 s); a gap this long means the supervisor stalled.
STALL_S = 2.5


class WorkerProcess(Protocol):
    """What the pool needs of a spawned worker: asyncio's Process, or a ForkedWorker."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    async def ended(self) -> None: ...

    def send_signal(self, signum: int) -> None: ...


class ExecWorker:
    """A worker started by exec: asyncio's Process; it has ended when it has exited."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    async def ended(self) -> None:
        await self.process.wait()

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)


class Spawner(Protocol):
    """The zygote: a forked worker for these arguments, or None to start it by exec."""

    async def spawn(self, argv: list[str]) -> WorkerProcess | None: ...

    def view(self) -> dict[str, Any]: ...


class WorkerState(StrEnum):
    STARTING = "starting"  # spawned, no hello yet
    RUNNING = "running"
    BACKOFF = "backoff"  # exited; waiting to restart
    FAILED = "failed"  # restart intensity exceeded
    STOPPED = "stopped"


@dataclass(slots=True)
class WorkerHandle:
    interface: str
    state: WorkerState = WorkerState.STOPPED
    process: WorkerProcess | None = None
    pid: int = 0  # of the process the pool spawned
    spawned_by: str = ""  # "zygote" (forked) or "exec"
    reported_pid: int = 0  # what the worker says in its hello (shown, never signalled)
    restarts: int = 0
    started_at: float = 0.0
    last_heartbeat: float = 0.0  # when we last heard from it, whatever it said
    quiet_s: float = 0.0  # how long its last heartbeat said the next one may take
    backoff_s: float = FIRST_RESTART_S
    restart_times: deque[float] = field(default_factory=deque)
    seq: int = -1  # last delta sequence sent; -1 before the snapshot
    pending: list[Any] = field(default_factory=list)  # broadcast changes not yet sent
    counters: dict[str, Any] = field(default_factory=dict)
    drops: dict[str, Any] = field(default_factory=dict)
    histograms: dict[str, Any] = field(default_factory=dict)
    frames: tuple[int, int, int] = (0, 0, 0)  # received, forwarded, dropped (views.py)
    last_exit: int | None = None
    restart_task: asyncio.Task[None] | None = None
    watch_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.state == WorkerState.RUNNING and self.seq >= 0


class WorkerPool:
    def __init__(
        self,
        endpoint: str,
        *,
        worker_args: list[str],
        on_state: Callable[[WorkerHandle], None],
        intensity: int = 5,
        period_s: float = 60.0,
        command: list[str] | None = None,
        zygote: Spawner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.zygote = zygote
        self.command = command or [sys.executable, "-m", "portier.workers"]
        self.endpoint = endpoint
        self.worker_args = worker_args
        self.on_state = on_state
        self.intensity = intensity
        self.period_s = period_s
        self.clock = clock
        self.handles: dict[str, WorkerHandle] = {}
        self.stopping = False
        self.last_check: float | None = None
        self.stalls = 0

    def _set(self, handle: WorkerHandle, state: WorkerState) -> None:
        if handle.state != state:
            handle.state = state
            self.on_state(handle)

    async def start(self, interface: str) -> WorkerHandle:
        handle = self.handles.get(interface)
        if handle is None:
            handle = self.handles[interface] = WorkerHandle(interface)
        if handle.process is not None and handle.process.returncode is None:
            return handle
        args = ["--interface", interface, "--endpoint", self.endpoint, *self.worker_args]
        handle.started_at = self.clock()  # a failed exec counts as a short run
        process: WorkerProcess | None = None
        if self.zygote is not None:
            process = await self.zygote.spawn(args)
        handle.spawned_by = "zygote" if process is not None else "exec"
        if process is None:
            try:
                process = ExecWorker(
                    await asyncio.create_subprocess_exec(
                        *self.command, *args, stdin=asyncio.subprocess.DEVNULL
                    )
                )
            except OSError as exc:
                log.error("cannot start worker for %s: %s", interface, exc)
                self._schedule_restart(handle)
                return handle
        handle.process = process
        handle.pid = process.pid
        handle.seq = -1
        handle.started_at = handle.last_heartbeat = self.clock()
        handle.quiet_s = 0.0
        self._set(handle, WorkerState.STARTING)
        log.info("worker %s started (%s), pid %d", interface, handle.spawned_by, process.pid)
        handle.watch_task = asyncio.create_task(self._watch(handle, process))
        handle.watch_task.add_done_callback(_log_failure)
        return handle

    async def _watch(self, handle: WorkerHandle, process: WorkerProcess) -> None:
        await process.ended()
        if handle.process is not process:
            return
        handle.last_exit = process.returncode
        handle.process = None
        handle.seq = -1
        if self.stopping or handle.state == WorkerState.STOPPED:
            self._set(handle, WorkerState.STOPPED)
            return
        self._schedule_restart(handle)
        code = await process.wait()
        handle.last_exit = code
        log.warning("worker %s (pid %d) exited with %s", handle.interface, process.pid, code)

    def _schedule_restart(self, handle: WorkerHandle) -> None:
        now = self.clock()
        if now - handle.started_at >= STABLE_AFTER_S:
            handle.backoff_s = FIRST_RESTART_S
        while handle.restart_times and now - handle.restart_times[0] > self.period_s:
            handle.restart_times.popleft()
        if len(handle.restart_times) >= self.intensity:
            log.error(
                "worker %s restarted %d times in %.0f s: FAILED, not restarting",
                handle.interface,
                len(handle.restart_times),
                self.period_s,
            )
            self._set(handle, WorkerState.FAILED)
            return
        handle.restart_times.append(now)
        delay = handle.backoff_s
        handle.backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, handle.backoff_s * 2))
        self._set(handle, WorkerState.BACKOFF)
        handle.restart_task = asyncio.create_task(self._restart_later(handle, delay))
        handle.restart_task.add_done_callback(_log_failure)

    async def _restart_later(self, handle: WorkerHandle, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.stopping or handle.state != WorkerState.BACKOFF:
            return
        handle.restarts += 1
        await self.start(handle.interface)

    def heard_from(self, interface: str) -> WorkerHandle | None:
        handle = self.handles.get(interface)
        if handle is not None:
            handle.last_heartbeat = self.clock()
        return handle

    def mark_running(self, handle: WorkerHandle) -> None:
        self._set(handle, WorkerState.RUNNING)

    def check_heartbeats(self, now: float) -> None:
        last, self.last_check = self.last_check, now
        if last is not None and now - last > STALL_S:
            self.stalls += 1
            log.warning(
                "the supervisor did not run for %.1f s: worker heartbeat deadlines start afresh",
                now - last,
            )
            for handle in self.handles.values():
                handle.last_heartbeat = now
            return
        for handle in self.handles.values():
            if (
                handle.state in (WorkerState.STARTING, WorkerState.RUNNING)
                and handle.process is not None
                and now - handle.last_heartbeat > handle.quiet_s + HEARTBEAT_TIMEOUT_S
            ):
                log.error(
                    "worker %s missed its heartbeats; killing pid %d", handle.interface, handle.pid
                )
                self._kill(handle, signal.SIGKILL)
                handle.last_heartbeat = now  # one kill per timeout

    def _kill(self, handle: WorkerHandle, signum: int) -> None:
        if handle.process is not None and handle.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                handle.process.send_signal(signum)

    async def stop(self, interface: str, timeout_s: float = 2.0) -> None:
        """Forget the interface's worker at once (a new one may start) and end it."""
        handle = self.handles.pop(interface, None)
        if handle is None:
            return
        if handle.restart_task is not None:
            handle.restart_task.cancel()
        self._set(handle, WorkerState.STOPPED)
        await self._terminate([handle], timeout_s)

    async def stop_all(self, timeout_s: float = 3.0) -> None:
        self.stopping = True
        handles = list(self.handles.values())
        for handle in handles:
            if handle.restart_task is not None:
                handle.restart_task.cancel()
        await self._terminate(handles, timeout_s)

    async def _terminate(self, handles: list[WorkerHandle], timeout_s: float) -> None:
        live = [h for h in handles if h.process is not None and h.process.returncode is None]
        for handle in live:
            self._kill(handle, signal.SIGTERM)
        waits = [h.process.wait() for h in live if h.process is not None]
        if not waits:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        except TimeoutError:
            for handle in live:
                self._kill(handle, signal.SIGKILL)
            await asyncio.gather(
                *(h.process.wait() for h in live if h.process), return_exceptions=True
            )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("worker supervision task failed", exc_info=task.exception())
