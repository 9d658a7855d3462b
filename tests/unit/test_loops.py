"""Supervised loops: restarts with backoff, counted, health, the fatal exit, background tasks."""

import asyncio
import itertools
import logging

import pytest

from portier.supervisor.loops import EXIT_LOOP_FAILED, LoopSupervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def test_a_failing_loop_is_logged_counted_and_restarted_with_growing_backoff(caplog):
    fatal: list[int] = []
    starts: list[float] = []

    async def scenario() -> LoopSupervisor:
        loops = LoopSupervisor(on_fatal=fatal.append, backoff_min_s=0.02, backoff_max_s=0.08)
        loop = asyncio.get_running_loop()

        async def body() -> None:
            starts.append(loop.time())
            if len(starts) <= 4:
                raise OSError(13, "Permission denied")
            await asyncio.Event().wait()  # then runs for good

        loops.start("worker_channel", body)
        while len(starts) < 5:
            await asyncio.sleep(0.01)
        assert loops.healthy(), loops.view()
        await loops.stop()
        return loops

    with caplog.at_level(logging.ERROR, "portier.supervisor"):
        loops = run(scenario())
    view = loops.view()["loops"]["worker_channel"]
    assert view["restarts"] == 4
    assert view["last_error"] == "PermissionError: [Errno 13] Permission denied"
    assert not fatal
    # The traceback is in the log, not only the message.
    failures = [r for r in caplog.records if r.getMessage() == "loop worker_channel failed"]
    assert len(failures) == 4 and all(r.exc_info for r in failures)
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert waits[0] >= 0.02 and waits[1] >= 0.04 and waits[2] >= 0.08 and waits[3] >= 0.08
    assert waits[3] < 0.08 * 2 + 0.5  # capped, not doubling further


def test_a_loop_is_unhealthy_while_it_backs_off():
    async def scenario() -> None:
        loops = LoopSupervisor(on_fatal=lambda code: None, backoff_min_s=5.0)
        failed = asyncio.Event()

        async def body() -> None:
            failed.set()
            raise RuntimeError("bug")

        loops.start("control", body)
        await failed.wait()
        await asyncio.sleep(0)
        assert loops.unhealthy() == ["control"]
        assert loops.view()["loops"]["control"] == {
            "healthy": False,
            "restarts": 1,
            "last_error": "RuntimeError: bug",
        }
        await loops.stop()

    run(scenario())


def test_a_loop_that_ends_by_itself_counts_as_failed():
    async def scenario() -> None:
        loops = LoopSupervisor(on_fatal=lambda code: None, backoff_min_s=5.0)
        ended = asyncio.Event()

        async def body() -> None:
            ended.set()

        loops.start("zap", body)
        await ended.wait()
        await asyncio.sleep(0)
        assert loops.view()["loops"]["zap"]["last_error"] == "ended unexpectedly"
        assert not loops.healthy()
        await loops.stop()

    run(scenario())


def test_a_beating_loop_is_healthy_only_while_it_beats():
    clock = Clock()

    async def scenario() -> None:
        loops = LoopSupervisor(on_fatal=lambda code: None, clock=clock)
        loops.start("timers", asyncio.Event().wait, beat_within_s=5.0)
        loops.start("control", asyncio.Event().wait)
        await asyncio.sleep(0)
        assert loops.healthy()
        clock.now += 4.0
        loops.beat("timers")
        clock.now += 4.0
        assert loops.healthy()
        clock.now += 2.0  # 6 s since the last beat
        assert loops.unhealthy() == ["timers"]
        loops.beat("timers")
        assert loops.healthy()
        await loops.stop()
        assert loops.unhealthy() == ["control", "timers"]  # stopped loops are not healthy

    run(scenario())


def test_too_many_failures_exit_the_daemon_non_zero():
    fatal: list[int] = []

    async def scenario() -> int:
        loops = LoopSupervisor(
            on_fatal=fatal.append, backoff_min_s=0.001, backoff_max_s=0.001, intensity=3
        )
        calls = 0

        async def body() -> None:
            nonlocal calls
            calls += 1
            raise ValueError("always")

        task = loops.start("timers", body)
        await task  # the wrapper ends instead of restarting for ever
        return calls

    calls = run(scenario())
    assert fatal == [EXIT_LOOP_FAILED] and calls == 4


def test_a_loop_whose_restart_is_unsafe_exits_at_once():
    fatal: list[int] = []

    async def scenario() -> None:
        loops = LoopSupervisor(on_fatal=fatal.append)

        async def body() -> None:
            raise RuntimeError("socket state unknown")

        await loops.start("control_tcp", body, fatal=True)
        assert loops.view()["loops"]["control_tcp"]["restarts"] == 1

    run(scenario())
    assert fatal == [EXIT_LOOP_FAILED]


def test_cancellation_stops_a_loop_and_is_not_a_failure():
    async def scenario() -> LoopSupervisor:
        loops = LoopSupervisor(on_fatal=lambda code: pytest.fail("fatal"))
        task = loops.start("worker_channel", asyncio.Event().wait)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return loops

    loops = run(scenario())
    assert loops.view()["loops"]["worker_channel"]["restarts"] == 0


def test_background_failures_are_logged_not_lost(caplog):
    async def scenario() -> LoopSupervisor:
        loops = LoopSupervisor(on_fatal=lambda code: None)

        async def broken() -> None:
            raise KeyError("gone")

        task = loops.background(broken(), "stopping the worker for vm1")
        with pytest.raises(KeyError):
            await task
        await asyncio.sleep(0)
        return loops

    with caplog.at_level(logging.ERROR, "portier.supervisor"):
        loops = run(scenario())
    assert loops.background_failures == 1
    record = next(r for r in caplog.records if "stopping the worker for vm1" in r.getMessage())
    assert record.exc_info and record.exc_info[0] is KeyError


def test_stop_lets_background_tasks_finish_and_cancels_the_late_ones():
    async def scenario() -> tuple[list[str], bool]:
        loops = LoopSupervisor(on_fatal=lambda code: None)
        done: list[str] = []

        async def quick() -> None:
            await asyncio.sleep(0.05)
            done.append("quick")

        loops.start("timers", asyncio.Event().wait)
        loops.background(quick(), "stopping a worker")
        hung = loops.background(asyncio.Event().wait(), "hung")
        await loops.stop(background_timeout_s=0.5)
        return done, hung.cancelled()

    assert run(scenario()) == (["quick"], True)
