"""Worker supervision and sd_notify, with stand-in worker commands (no root needed)."""

import asyncio
import socket
import sys
import threading
import time

from portier.supervisor.sdnotify import Notifier
from portier.supervisor.workerpool import WorkerPool, WorkerState


def test_crashing_worker_backs_off_then_fails():
    states: list[tuple[float, WorkerState]] = []

    async def scenario() -> WorkerPool:
        pool = WorkerPool(
            "ipc:///nonexistent",
            worker_args=[],
            on_state=lambda handle: states.append((time.monotonic(), handle.state)),
            intensity=3,
            period_s=60,
            command=[sys.executable, "-c", "import sys; sys.exit(7)", "--"],
        )
        await pool.start("eth0")
        deadline = time.monotonic() + 20
        while pool.handles["eth0"].state != WorkerState.FAILED:
            assert time.monotonic() < deadline, f"never FAILED: {states}"
            await asyncio.sleep(0.05)
        return pool

    pool = asyncio.run(scenario())
    handle = pool.handles["eth0"]
    assert handle.restarts == 3 and handle.last_exit == 7
    backoffs = [t for t, state in states if state == WorkerState.BACKOFF]
    starts = [t for t, state in states if state == WorkerState.STARTING]
    # The first restart comes at once, each further one waited longer: 0.1 s, 0.2 s.
    waits = [start - backoff for backoff, start in zip(backoffs, starts[1:], strict=False)]
    assert len(waits) == 3
    assert waits[0] < 0.1 and waits[1] >= 0.1 and waits[2] >= 0.2
    assert states[-1][1] == WorkerState.FAILED


def test_stop_all_terminates_running_workers():
    async def scenario() -> int:
        pool = WorkerPool(
            "ipc:///nonexistent",
            worker_args=[],
            on_state=lambda handle: None,
            command=[sys.executable, "-c", "import time; time.sleep(60)", "--"],
        )
        handle = await pool.start("eth0")
        started = time.monotonic()
        await pool.stop_all(timeout_s=3)
        assert handle.process is None or handle.process.returncode is not None
        assert handle.state == WorkerState.STOPPED
        return int(time.monotonic() - started)

    assert asyncio.run(scenario()) < 3


def test_notifier_speaks_sd_notify(tmp_path):
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    notifier = Notifier(str(path))
    assert notifier.ready("3/3 workers forwarding")
    assert listener.recv(1024) == b"READY=1\nSTATUS=3/3 workers forwarding"
    assert notifier.stopping()
    assert listener.recv(1024) == b"STOPPING=1\nSTATUS=stopping"
    assert not Notifier("").enabled and not Notifier("").ready("x")


def test_notifier_never_blocks_on_a_listener_that_stopped_reading(tmp_path):
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    notifier = Notifier(str(path))
    results: list[bool] = []
    sender = threading.Thread(
        target=lambda: results.extend(notifier.status("x" * 200) for _ in range(5000))
    )
    sender.start()
    sender.join(timeout=10)
    assert not sender.is_alive(), "notify blocked on a full socket"
    assert results[0] and not results[-1]  # dropped once the queue was full


def test_watchdog_interval_follows_systemd(monkeypatch, tmp_path):
    from portier.supervisor.sdnotify import watchdog_interval_s

    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None
    import os

    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 5.0
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    assert Notifier(str(path)).watchdog()
    assert listener.recv(64) == b"WATCHDOG=1"


def test_abstract_notify_socket():
    name = f"@portier-test-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name[1:])
    assert Notifier(name).status("hello")
    assert listener.recv(64) == b"STATUS=hello"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)", "--"]


def test_a_missed_heartbeat_kills_the_spawned_process_not_a_reported_pid():
    async def scenario() -> None:
        decoy = await asyncio.create_subprocess_exec(*SLEEPER[:-1])
        pool = WorkerPool(
            "ipc:///nonexistent", worker_args=[], on_state=lambda h: None, command=SLEEPER
        )
        try:
            handle = await pool.start("eth0")
            spawned = handle.process
            assert spawned is not None
            # Whatever pid the worker claims (a hello is untrusted), the spawned one is hit.
            handle.pid = decoy.pid
            for step in range(12):  # ticks every 0.5 s, no word from the worker
                pool.check_heartbeats(handle.last_heartbeat + 0.5 * (step + 1))
            assert await asyncio.wait_for(spawned.wait(), 5) == -9
            assert decoy.returncode is None, "the reported pid was killed"
        finally:
            decoy.kill()
            await decoy.wait()
            await pool.stop_all(timeout_s=2)

    asyncio.run(scenario())


def sleeper_pool(clock: FakeClock) -> WorkerPool:
    """A pool whose "workers" sleep, on a clock the test moves."""
    return WorkerPool(
        "ipc:///nonexistent",
        worker_args=[],
        on_state=lambda h: None,
        command=SLEEPER,
        clock=clock,
    )


def test_a_stalled_supervisor_resets_heartbeat_deadlines_instead_of_killing():
    async def scenario() -> None:
        clock = FakeClock()
        pool = sleeper_pool(clock)
        try:
            handle = await pool.start("eth0")
            process = handle.process
            assert process is not None
            for _ in range(4):  # normal ticks, the worker heard from each second
                clock.now += 0.5
                pool.check_heartbeats(clock.now)
                pool.heard_from("eth0")
            clock.now += 20.0  # SIGSTOP for 20 s, then SIGCONT: the next tick is late
            pool.check_heartbeats(clock.now)
            assert process.returncode is None and pool.stalls == 1
            for _ in range(8):  # 4 s more of silence is still within the timeout
                clock.now += 0.5
                pool.check_heartbeats(clock.now)
            await asyncio.sleep(0.2)
            assert process.returncode is None, "killed after the supervisor's own stall"
            for _ in range(4):  # but a worker that stays silent is still hung
                clock.now += 0.5
                pool.check_heartbeats(clock.now)
            assert await asyncio.wait_for(process.wait(), 5) == -9
        finally:
            await pool.stop_all(timeout_s=2)

    asyncio.run(scenario())


def test_a_worker_is_killed_only_when_silent_past_the_beat_it_promised():
    """An idle worker promises its next beat up to 30 s ahead; silence within that (and
    the timeout after it) is not a hang, silence beyond it is."""

    async def scenario() -> None:
        clock = FakeClock()
        pool = sleeper_pool(clock)
        try:
            handle = await pool.start("eth0")
            process = handle.process
            assert process is not None
            pool.heard_from("eth0")
            handle.quiet_s = 30.0  # "my next beat comes within 30 s"
            for _ in range(68):  # 34 s of ticks: within 30 s + HEARTBEAT_TIMEOUT_S
                clock.now += 0.5
                pool.check_heartbeats(clock.now)
            await asyncio.sleep(0.2)
            assert process.returncode is None, "killed within its promise"
            for _ in range(4):
                clock.now += 0.5
                pool.check_heartbeats(clock.now)
            assert await asyncio.wait_for(process.wait(), 5) == -9
        finally:
            await pool.stop_all(timeout_s=2)

    asyncio.run(scenario())


def test_the_daemon_takes_its_descriptor_limit_up_to_the_hard_one():
    """Each worker costs the supervisor a pidfd and a lifeline: systemd's soft limit of
    1024 would run out near 500 interfaces."""
    import subprocess

    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from portier.supervisor.main import raise_descriptor_limit\n"
        "raise_descriptor_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "True", result.stderr
