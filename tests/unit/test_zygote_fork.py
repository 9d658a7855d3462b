"""The zygote's fork, in this process: the child's lifeline with hundreds of siblings.

A zygote with more than ~250 children holds their pidfds on descriptors up to and past
LIFELINE_FD.  The child closes its siblings' pidfds; done after the lifeline was put on
LIFELINE_FD, that closed the lifeline itself, and the supervisor took every new worker
for dead and forked another.
"""

import os
import socket

from portier import spawning
from portier.workers import main as worker_main
from portier.workers.zygote import LIFELINE_FD, Zygote


def test_the_lifeline_survives_a_siblings_pidfd_on_its_descriptor(monkeypatch):
    supervisor_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fillers = []
    try:
        while (fd := os.open("/dev/null", os.O_RDONLY)) < LIFELINE_FD:
            fillers.append(fd)
        fillers.append(fd)
        assert fd == LIFELINE_FD  # as a sibling's pidfd would be in a big zygote
        zygote = Zygote(zygote_end, supervisor_pidfd=os.pidfd_open(os.getpid()))
        zygote.children[LIFELINE_FD] = 0

        def worker(argv: list[str]) -> int:
            """Stands in for the worker: says so on its lifeline, if it has one."""
            return 0 if os.write(LIFELINE_FD, b"alive") == 5 else 3

        monkeypatch.setattr(worker_main, "main", worker)
        pidfd = zygote.on_request(spawning.encode("spawn", id=1, argv=["--interface", "vm1"]))
        assert pidfd is not None
        raw, fds, _, _ = socket.recv_fds(supervisor_end, spawning.MESSAGE_MAX_BYTES, 1)
        message = spawning.decode(raw)
        assert message["op"] == "spawned" and len(fds) == 1
        with socket.socket(fileno=fds[0]) as lifeline:
            lifeline.settimeout(10)
            assert lifeline.recv(16) == b"alive", "the worker's lifeline was cut"
        _, status = os.waitpid(message["pid"], 0)
        assert os.waitstatus_to_exitcode(status) == 0
        os.close(pidfd)
    finally:
        for fd in fillers:
            os.close(fd)
        supervisor_end.close()
        zygote_end.close()
