"""The supervisor's side of the worker zygote: start it, supervise it, ask it for workers.

The zygote (workers/zygote.py, started here by exec) forks a worker on request over a
unix SEQPACKET socket pair (portier.spawning).  Each forked worker is watched and
signalled through a pidfd that this process opens itself, after checking that the
pid's parent is the zygote it started: a pid is never signalled unless it was verified
while its pidfd was opened, and a pidfd cannot name a reused pid.  Its exit status
comes from the zygote's report; when the zygote is gone, the exit is still seen on the
pidfd and the status is UNKNOWN_EXIT.  The zygote is supervised like a worker: a crash
(or a request it does not answer in time, then it is killed) is followed by a restart
with backoff, and until it is back `spawn` returns None, so that the pool starts
workers by exec as before.  Workers it forked outlive it.  Requests queue in the
zygote, which forks one at a time, so a hung zygote is one that answers nothing for
SPAWN_TIMEOUT_S while requests wait, not one whose 500th answer comes a second after
the first request (hundreds of interfaces at start-up used to kill a working zygote and
fall back to 15 MiB exec'd workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from portier import spawning

log = logging.getLogger("portier.supervisor")

READY_TIMEOUT_S = 10.0
SPAWN_TIMEOUT_S = 1.0
EXIT_REPORT_S = 0.5  # how long a worker's exit waits for the zygote's status report
UNKNOWN_EXIT = -255
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0


class ZygoteState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"  # exited or killed; restarting after a backoff
    STOPPED = "stopped"


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class ForkedWorker:
    """A worker forked by the zygote, behind the same face as asyncio's Process."""

    def __init__(self, pid: int, pidfd: int, lifeline: socket.socket | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.lifeline = lifeline
        self.returncode: int | None = None
        self.reported_code: int | None = None
        self._reported = asyncio.Event()
        self._ended = asyncio.Event()
        self._done = asyncio.Event()
        self._finishing: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, self._on_exit)
        if lifeline is not None:
            lifeline.setblocking(False)
            loop.add_reader(lifeline, self._on_lifeline)

    def _on_lifeline(self) -> None:
        assert self.lifeline is not None
        try:
            if self.lifeline.recv(64):
                return  # the worker never writes; nothing to act on
        except BlockingIOError:
            return
        except OSError:
            pass
        self._drop_lifeline()
        self._ended.set()

    def _drop_lifeline(self) -> None:
        if self.lifeline is not None:
            asyncio.get_running_loop().remove_reader(self.lifeline)
            self.lifeline.close()
            self.lifeline = None

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self.pidfd)
        self._drop_lifeline()
        self._ended.set()
        self._finishing = asyncio.ensure_future(self._finish())

    async def _finish(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reported.wait(), EXIT_REPORT_S)
        code = self.reported_code
        self.returncode = UNKNOWN_EXIT if code is None else code
        os.close(self.pidfd)
        self._done.set()

    async def ended(self) -> None:
        """No code of the worker runs any more (its exit may still be under way)."""
        await self._ended.wait()

    def report_exit(self, code: int) -> None:
        self.reported_code = code
        self._reported.set()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self.pidfd, signum)


class ZygoteSpawner:
    def __init__(
        self,
        *,
        log_level: str = "info",
        command: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command or [sys.executable, "-m", "portier.workers.zygote"]
        self.log_level = log_level
        self.clock = clock
        self.state = ZygoteState.STOPPED
        self.process: asyncio.subprocess.Process | None = None
        self.pid = 0
        self.restarts = 0
        self.spawned = 0
        self.started_at = 0.0
        self.backoff_s = BACKOFF_MIN_S
        self.sock: socket.socket | None = None
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[ForkedWorker | None]] = {}
        self.progress_at = 0.0  # loop time of the last answer, or of a request to an idle one
        self.children: dict[int, ForkedWorker] = {}
        self.ready = asyncio.Event()

    # --- the zygote process --------------------------------------------------------

    async def start(self) -> bool:
        """Exec the zygote and wait for its ready message; False if it did not come."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ready.clear()
        self.state = ZygoteState.STARTING
        self.started_at = self.clock()
        argv = [*self.command, "--socket-fd", str(theirs.fileno()), "--log-level", self.log_level]
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, pass_fds=[theirs.fileno()]
            )
        except OSError as exc:
            log.error("cannot start the zygote: %s", exc)
            ours.close()
            self.state = ZygoteState.DOWN
            return False
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        asyncio.get_running_loop().add_reader(ours, self._on_readable)
        try:
            await asyncio.wait_for(self.ready.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            log.error("the zygote did not get ready within %.0f s; killing it", READY_TIMEOUT_S)
            self._kill()
            return False
        return True

    async def supervise(self) -> None:
        """Restart the zygote whenever it ends, with backoff; runs until cancelled."""
        while True:
            if self.process is None or self.process.returncode is not None:
                await self.start()
            code = await self.process.wait() if self.process is not None else None
            self._down()
            log.warning("the zygote (pid %d) exited with %s; workers start by exec", self.pid, code)
            if self.clock() - self.started_at >= STABLE_AFTER_S:
                self.backoff_s = BACKOFF_MIN_S
            await asyncio.sleep(self.backoff_s)
            self.backoff_s = min(BACKOFF_MAX_S, self.backoff_s * 2)
            self.restarts += 1

    def _down(self) -> None:
        self.state = ZygoteState.DOWN
        self.ready.clear()
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock)
            self.sock.close()
            self.sock = None
        for future in self.pending.values():
            if not future.done():
                future.set_result(None)
        self.pending.clear()
        self.children.clear()  # they keep their pidfds; no report will come for them

    def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()  # our own child: its pid is ours until we reap it

    async def stop(self, timeout_s: float = 2.0) -> None:
        self.state = ZygoteState.STOPPED
        process = self.process
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock)
            self.sock.close()  # end of file: the zygote ends by itself
            self.sock = None
        if process is None or process.returncode is not None:
            return
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            self._kill()
            await process.wait()

    # --- requests ------------------------------------------------------------------

    async def spawn(self, argv: list[str]) -> ForkedWorker | None:
        """A worker forked with these arguments, or None (then start it by exec)."""
        if self.state != ZygoteState.READY or self.sock is None:
            return None
        self.next_id += 1
        request_id = self.next_id
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ForkedWorker | None] = loop.create_future()
        if not self.pending:
            self.progress_at = loop.time()
        self.pending[request_id] = future
        try:
            self.sock.send(spawning.encode("spawn", id=request_id, argv=argv))
        except OSError as exc:
            self.pending.pop(request_id, None)
            log.warning("cannot ask the zygote for a worker: %s", exc)
            return None
        try:
            while True:
                left = self.progress_at + SPAWN_TIMEOUT_S - loop.time()
                try:
                    return await asyncio.wait_for(asyncio.shield(future), max(0.0, left))
                except TimeoutError:
                    if future.done() or loop.time() - self.progress_at < SPAWN_TIMEOUT_S:
                        continue  # it answered someone meanwhile: still working
                    log.error("the zygote answered nothing for %.1f s; killing it", SPAWN_TIMEOUT_S)
                    self._kill()
                    return None
        finally:
            self.pending.pop(request_id, None)

    def _on_readable(self) -> None:
        while self.sock is not None:
            try:
                raw, fds, _flags, _address = socket.recv_fds(
                    self.sock, spawning.MESSAGE_MAX_BYTES + 1, 1
                )
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("the zygote's socket failed: %s", exc)
                raw, fds = b"", []
            lifeline = socket.socket(fileno=fds[0]) if fds else None
            if not raw:  # the zygote is gone; supervise() sees its exit
                if lifeline is not None:
                    lifeline.close()
                asyncio.get_running_loop().remove_reader(self.sock)
                return
            try:
                message = spawning.decode(raw)
            except ValueError as exc:
                log.warning("bad message from the zygote: %s", exc)
                message = None
            if message is not None:
                lifeline = self._on_message(message, lifeline)
            if lifeline is not None:  # not taken by a new worker
                lifeline.close()

    def _on_message(
        self, message: dict[str, Any], lifeline: socket.socket | None
    ) -> socket.socket | None:
        """Act on one message; the lifeline that came with it, unless a worker took it."""
        op = message["op"]
        if op == "ready":
            if message["pid"] == (self.process.pid if self.process else None):
                self.pid = message["pid"]
                self.state = ZygoteState.READY
                self.ready.set()
                log.info("zygote ready, pid %d", self.pid)
        elif op == "spawned":
            self.progress_at = asyncio.get_running_loop().time()
            worker = self._adopt(message["pid"], lifeline)
            lifeline = None
            future = self.pending.get(message["id"])
            if future is not None and not future.done():
                future.set_result(worker)
            elif worker is not None:  # asked for, then given up on: not ours to run
                worker.send_signal(signal.SIGKILL)
        elif op == "exited":
            child = self.children.pop(message["pid"], None)
            if child is not None:
                child.report_exit(message["code"])
        elif op == "error":
            self.progress_at = asyncio.get_running_loop().time()
            log.warning("the zygote refused a worker: %s", message["message"])
            future = self.pending.get(message["id"]) if message["id"] is not None else None
            if future is not None and not future.done():
                future.set_result(None)
        return lifeline

    def _adopt(self, pid: int, lifeline: socket.socket | None) -> ForkedWorker | None:
        """A pidfd on the new worker, held only if the pid is verifiably the zygote's child."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            log.warning("cannot open a pidfd for forked worker %d: %s", pid, exc)
            if lifeline is not None:
                lifeline.close()
            return None
        if parent_pid(pid) != self.pid:
            os.close(pidfd)
            if lifeline is not None:
                lifeline.close()
            log.error("pid %d is not the zygote's child; not adopting it", pid)
            return None
        worker = ForkedWorker(pid, pidfd, lifeline)
        self.children[pid] = worker
        self.spawned += 1
        return worker

    def view(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "pid": self.pid if self.state == ZygoteState.READY else None,
            "restarts": self.restarts,
            "spawned": self.spawned,
        }
