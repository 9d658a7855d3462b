"""A real worker process against a stand-in supervisor on a real ZeroMQ socket.

The worker must outlive a silent supervisor (one stopped or stalled), keep its replica
and ask for a fresh snapshot when the supervisor speaks again; and it must still die
with the process that started it.
"""

from __future__ import annotations

import os
import secrets
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
# Frames sent into a namespace's veth from its peer, by a process in that namespace.
SEND_FRAMES = """
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(("w1", 0))
dst = bytes.fromhex(open("/sys/class/net/w0/address").read().strip().replace(":", ""))
ip6 = bytes.fromhex("60000000000811ff" + "fe80" + "00" * 13 + "01" + "fe80" + "00" * 13 + "02")
for _ in range(int(sys.argv[1])):
    sock.send(dst + bytes.fromhex("020000000001") + b"\\x86\\xdd" + ip6 + bytes(8))
"""


def worker_argv(endpoint: str, interface: str = "lo") -> list[str]:
    return [
        sys.executable,
        "-m",
        "portier.workers",
        "--interface",
        interface,
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


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_worker_waiting_for_its_snapshot_does_not_spin_on_the_frames_that_wait(supervisor):
    """Before the snapshot, frames wait in the packet sockets; a socket with a frame in it
    left in the poller made poll() return at once, over and over: hundreds of workers
    starting together each burnt a core until their snapshot came."""
    router, endpoint = supervisor
    namespace = "ptw" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    worker = None
    try:
        ns = ["ip", "-n", namespace, "link"]
        subprocess.run([*ns, "add", "w0", "type", "veth", "peer", "name", "w1"], check=True)
        for name in ("w0", "w1"):
            subprocess.run([*ns, "set", name, "up"], check=True)
        argv = ["ip", "netns", "exec", namespace, *worker_argv(endpoint, "w0")]
        worker = subprocess.Popen(argv)  # ip netns exec execs: this pid is the worker's
        receive(router, "hello", 10)  # and no snapshot ever: its replica stays stale
        sender = ["ip", "netns", "exec", namespace, sys.executable, "-c", SEND_FRAMES, "20"]
        subprocess.run(sender, check=True, timeout=30)
        before = _cpu_s(worker.pid)
        time.sleep(2.0)  # the window observed, not a wait for an event
        used = _cpu_s(worker.pid) - before
        assert worker.poll() is None
        assert used < 0.5, f"the waiting worker used {used:.2f} s of CPU in 2 s"
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(5)
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan is reaped by init, or lingers as one)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
