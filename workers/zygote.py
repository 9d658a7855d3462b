"""The zygote: a pre-imported, frozen process that forks workers on the supervisor's request.

portierd starts it by exec before any worker.  It imports the whole worker (and so
every library a worker uses), calls `gc.freeze()` so that the imported heap is never
touched again by the collector, and then only waits on a unix SEQPACKET socket (one
msgpack message per packet) for "spawn" requests.  Each is answered by a fork whose
child runs exactly the worker's own `main` and never returns into this loop.  A child
shares the parent's pages copy-on-write, so a worker costs its own state, not a fresh
interpreter.  The zygote reaps its children and reports each exit with its status.
With each "spawned" answer goes (SCM_RIGHTS) one end of a socket pair whose other end
is the child's LIFELINE_FD, above any descriptor a worker opens: the kernel releases a
dying process's descriptors highest first (measured here), and releasing each packet
socket waits for an RCU grace period (~12 ms), so the supervisor sees end of file on
the lifeline tens of milliseconds before the exit itself, once no code of the worker
runs any more, and can start its successor at once.

Fork-safety rules (why a fork from here is sound, and what must stay true):
- Single-threaded, always: it never starts a thread, and refuses to fork if one exists
  (a fork copies only the calling thread; a lock held by another stays held forever).
- No ZeroMQ context or socket, no asyncio loop, no logging handler that holds a lock
  across calls: the child makes all of those itself, after the fork (a zmq context has
  I/O threads; its sockets cannot cross a fork).
- The child closes what belongs to the zygote (the request socket, the pidfds of its
  siblings) before running the worker, and leaves with `os._exit`, so no `atexit` or
  buffered output of the zygote runs twice.
- Nothing is done lazily that the child would redo: heavy imports happen here, before
  `gc.freeze()`, so that the pages stay shared.

Liveness: the zygote holds a pidfd of the supervisor, opened while the supervisor was
verifiably its parent, and ends when it becomes readable (and by PDEATHSIG).  Its
children inherit that pidfd and watch it instead of PDEATHSIG, which would fire on the
zygote's own death: a crashed zygote must leave its workers running.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import resource
import select
import signal
import socket
import sys
import threading
import traceback
from typing import Any

from portier import logs, spawning
from portier.workers import main as worker_main

log = logging.getLogger("portier.zygote")

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
LIFELINE_FD = 255  # a worker holds a few dozen descriptors; the table stays small


def _prctl(option: int, value: int | bytes) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def exit_code(status: int) -> int:
    """A wait status as subprocess shows it: the exit code, or minus the signal."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class Zygote:
    def __init__(self, requests: socket.socket, supervisor_pidfd: int) -> None:
        self.requests = requests
        self.supervisor_pidfd = supervisor_pidfd
        self.children: dict[int, int] = {}  # pidfd -> pid

    def send(self, op: str, **fields: Any) -> None:
        self.requests.send(spawning.encode(op, **fields))

    def serve(self) -> int:
        poller = select.poll()
        poller.register(self.requests, select.POLLIN)
        poller.register(self.supervisor_pidfd, select.POLLIN)
        self.send("ready", pid=os.getpid())
        while True:
            for fd, _events in poller.poll():  # no timeout: an idle zygote never wakes
                if fd == self.supervisor_pidfd:
                    log.info("the supervisor is gone; the zygote ends")
                    return 0
                if fd == self.requests.fileno():
                    raw = self.requests.recv(spawning.MESSAGE_MAX_BYTES + 1)
                    if not raw:
                        return 0  # the supervisor closed its end
                    pidfd = self.on_request(raw)
                    if pidfd is not None:
                        poller.register(pidfd, select.POLLIN)
                elif fd in self.children:
                    poller.unregister(fd)
                    self.reap(fd)

    def on_request(self, raw: bytes) -> int | None:
        try:
            request = spawning.decode(raw)
            if request["op"] != "spawn":
                raise ValueError(f"{request['op']!r} is not a request")
        except ValueError as exc:
            log.warning("bad request from the supervisor: %s", exc)
            self.send("error", id=None, message=str(exc))
            return None
        request_id, argv = request["id"], request["argv"]
        if threading.active_count() != 1:
            self.send("error", id=request_id, message="the zygote has threads; not forking")
            return None
        lifeline, childs_end = socket.socketpair()
        try:
            pid = os.fork()
        except OSError as exc:
            lifeline.close()
            childs_end.close()
            self.send("error", id=request_id, message=f"fork failed: {exc.strerror}")
            return None
        if pid == 0:
            lifeline.close()
            self.become_worker(argv, childs_end)  # never returns
        childs_end.close()
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        message = spawning.encode("spawned", id=request_id, pid=pid)
        socket.send_fds(self.requests, [message], [lifeline.fileno()])
        lifeline.close()
        return pidfd

    def reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return
        self.send("exited", pid=pid, code=exit_code(status))

    def close_inherited(self) -> None:
        """In a new child: what belongs to the zygote (its request socket, the siblings'
        pidfds)."""
        self.requests.close()
        for pidfd in self.children:
            os.close(pidfd)
        self.children.clear()

    def become_worker(self, argv: list[str], childs_end: socket.socket) -> None:
        code = 1
        try:
            self.close_inherited()
            # Only now: with hundreds of children, a sibling's pidfd may sit on LIFELINE_FD,
            # and closing it afterwards cut the new worker's lifeline (the supervisor took
            # it for dead and started another, again and again).
            if childs_end.fileno() == LIFELINE_FD:
                childs_end.detach()
            else:
                os.dup2(childs_end.fileno(), LIFELINE_FD)  # the first one a dying process closes
                childs_end.close()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            interface = argv[argv.index("--interface") + 1] if "--interface" in argv else "?"
            _prctl(PR_SET_NAME, f"portier-w {interface}"[:15].encode())
            code = worker_main.main([*argv, "--supervisor-pidfd", str(self.supervisor_pidfd)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portier-zygote", description=__doc__)
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logs.configure("portier-zygote", args.log_level)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when it ends
    parent = os.getppid()
    supervisor_pidfd = os.pidfd_open(parent)
    if os.getppid() != parent or parent == 1:
        return 1  # the supervisor died before its pidfd was open: it is not ours to watch
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= LIFELINE_FD:
        log.error("the descriptor limit is below %d; the zygote does not start", LIFELINE_FD)
        return 1
    requests = socket.socket(fileno=args.socket_fd)
    gc.collect()
    gc.freeze()  # the imported heap stays shared with every child
    return Zygote(requests, supervisor_pidfd).serve()


if __name__ == "__main__":
    sys.exit(main())
