"""A real worker process against a stand-in supervisor on a real ZeroMQ socket.

The worker must outlive a silent supervisor (one stopped or stalled), keep its replica
and ask for a fresh snapshot when the supervisor speaks again; and it must still die
with the process that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import zmq

from portier import schema
from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.replication import heartbeat_message, snapshot_message

SILENCE_S = 1.0


def worker_argv(endpoint: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "portier.workers",
        "--interface",
        "lo",
        "--endpoint",
        endpoint,
        "--supervisor-silence",
        str(SILENCE_S),
        "--log-level",
        "warning",
    ]


@pytest.fixture
def supervisor(tmp_path):
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    endpoint = f"ipc://{tmp_path}/workers.sock"
    router.bind(endpoint)
    yield router, endpoint
    router.close(linger=0)
    context.term()


def receive(router: zmq.Socket, kind: str, timeout_s: float, **fields: object) -> dict:
    """The next message of `kind` (with these field values) from the worker, within the
    time; others are skipped."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if router.poll(int(left * 1000) + 1):
            _, raw = router.recv_multipart()
            message = schema.decode_worker(raw)
            if message["kind"] == kind and all(message.get(k) == v for k, v in fields.items()):
                return message
    raise AssertionError(f"no {kind} from the worker within {timeout_s} s")


def send(router: zmq.Socket, message: dict) -> None:
    router.send_multipart([b"lo", schema.encode(message)])


def test_a_silent_supervisor_is_outlived_and_asked_for_a_snapshot(supervisor):
    router, endpoint = supervisor
    worker = subprocess.Popen(worker_argv(endpoint), stderr=subprocess.PIPE, text=True)
    try:
        receive(router, "hello", 10)
        topology = Topology()
        topology.bind("lo")
        send(router, snapshot_message(0, topology, NeighborCache()))
        receive(router, "heartbeat", 5, seq=0)  # the snapshot is applied
        # Silent for three times the silence limit: heartbeats keep coming, nothing ends.
        silent_until = time.monotonic() + 3 * SILENCE_S
        beats = 0
        while time.monotonic() < silent_until:
            receive(router, "heartbeat", 3)
            beats += 1
        assert worker.poll() is None, "the worker exited while the supervisor was silent"
        assert beats >= 2
        send(router, heartbeat_message())
        assert receive(router, "resync", 5)["seq"] == 0  # it kept its replica meanwhile
        send(router, {"kind": "command", "command": "stop"})
        assert worker.wait(10) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
    assert "forwarding on with the replica" in worker.stderr.read()


def test_the_worker_dies_with_the_process_that_started_it(supervisor, tmp_path):
    router, endpoint = supervisor
    pid_file = tmp_path / "worker.pid"
    parent_code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        worker = subprocess.Popen({worker_argv(endpoint)!r})
        open({str(pid_file)!r}, "w").write(str(worker.pid))
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the parent did not start the worker"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        receive(router, "hello", 10)  # up, and past asking for its parent's death signal
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
        if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan is reaped by init, or lingers as one)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
