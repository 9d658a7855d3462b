"""The supervisor's zygote client against a stand-in zygote that forks slowly.

Requests queue in the zygote, which forks one at a time: under the load of hundreds of
interfaces starting, the last answer of a burst comes seconds after its request, and
the zygote still works.  Only a zygote that answers nothing for SPAWN_TIMEOUT_S is hung.
"""

import asyncio
import signal
import sys

from portier.supervisor.zygote import SPAWN_TIMEOUT_S, ZygoteSpawner

# Answers each spawn after `delay` seconds with a real child of its own (sleeping), or,
# with a negative delay, never answers at all.
STAND_IN = """
import os, socket, sys, time
from portier import spawning
delay = float(sys.argv[1])
sock = socket.socket(fileno=int(sys.argv[sys.argv.index("--socket-fd") + 1]))
sock.send(spawning.encode("ready", pid=os.getpid()))
while True:
    raw = sock.recv(spawning.MESSAGE_MAX_BYTES)
    if not raw:
        break
    if delay < 0:
        continue
    request = spawning.decode(raw)
    time.sleep(delay)
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    ours, theirs = socket.socketpair()
    socket.send_fds(sock, [spawning.encode("spawned", id=request["id"], pid=pid)], [ours.fileno()])
    ours.close()
"""


def spawner(delay_s: float) -> ZygoteSpawner:
    return ZygoteSpawner(command=[sys.executable, "-c", STAND_IN, str(delay_s)])


def test_a_burst_of_requests_answered_slowly_but_steadily_keeps_the_zygote():
    count, delay_s = 8, 0.3  # the last answer comes 2.4 s after its request

    async def scenario() -> None:
        zygote = spawner(delay_s)
        assert await zygote.start()
        try:
            workers = await asyncio.gather(
                *(zygote.spawn(["--interface", f"vm{i}"]) for i in range(count))
            )
            assert all(w is not None for w in workers), "a request was given up on"
            assert zygote.process is not None and zygote.process.returncode is None, "killed"
            for worker in workers:
                assert worker is not None
                worker.send_signal(signal.SIGKILL)
        finally:
            await zygote.stop()

    asyncio.run(scenario())
    assert count * delay_s > 2 * SPAWN_TIMEOUT_S  # the burst outlasts one request's timeout


def test_a_zygote_that_answers_nothing_is_killed_after_the_timeout():
    async def scenario() -> None:
        zygote = spawner(-1)
        assert await zygote.start()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = await asyncio.gather(zygote.spawn(["--interface", "vm1"]), zygote.spawn([]))
            waited = loop.time() - started
            assert results == [None, None]  # started by exec instead
            assert SPAWN_TIMEOUT_S <= waited < SPAWN_TIMEOUT_S + 2
            assert zygote.process is not None
            assert await asyncio.wait_for(zygote.process.wait(), 5) == -signal.SIGKILL
        finally:
            await zygote.stop()

    asyncio.run(scenario())
