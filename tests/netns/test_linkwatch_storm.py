"""LinkWatch against the real kernel under a storm of interfaces coming and going.

A watcher of one veth runs inside a namespace of its own with a tiny event buffer, and
reads only now and then, while hundreds of veth pairs are created and deleted there as
fast as the kernel allows: its event socket overruns (ENOBUFS) and dumps race with the
changes.  The watched interface never changes, so the watcher must never report it
gone, nor stop.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import pytest
from lab import run

import portier.workers.linkwatch as linkwatch

PAIRS = 300

WATCHER = """
import importlib.util, json, select, socket, sys, time
spec = importlib.util.spec_from_file_location("linkwatch", sys.argv[1])
module = sys.modules["linkwatch"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
watch = module.LinkWatch("pw0")
watch._events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
# The storm is of other interfaces, which the event filter keeps out; without it they
# overrun the socket, as events of an absent interface (no filter then) could.
watch._events.setsockopt(socket.SOL_SOCKET, 27, 0)  # SO_DETACH_FILTER
print(json.dumps({"start": watch.state.ifindex}), flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    time.sleep(0.05)  # a busy worker: events pile up meanwhile
    select.select([watch.fileno()], [], [], 0.05)
    now = time.monotonic()
    try:
        changed = watch.read(now) if hasattr(watch, "due") else watch.read()
        if hasattr(watch, "due") and watch.due(now):
            changed = watch.retry(now) or changed
    except Exception as exc:
        print(json.dumps({"error": repr(exc)}), flush=True)
        raise
    if changed:
        print(json.dumps({"ifindex": watch.state.ifindex}), flush=True)
print(json.dumps({"end": watch.state.ifindex, "counters": getattr(watch, "counters", {})}))
"""


@pytest.fixture
def namespace():
    name = f"plw{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "add", "pw0", "type", "veth", "peer", "name", "pw0p")
        run("ip", "-n", name, "link", "set", "pw0", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def test_a_storm_of_interfaces_never_makes_the_watched_one_seem_gone(namespace, tmp_path):
    batch = tmp_path / "storm"
    lines = [f"link add st{i} type veth peer name st{i}p" for i in range(PAIRS)]
    lines += [f"link del st{i}" for i in range(PAIRS)]
    batch.write_text("\n".join(lines * 2) + "\n")
    script = tmp_path / "watcher.py"
    script.write_text(WATCHER)
    watcher = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, str(script), linkwatch.__file__, "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()
        assert first, f"the watcher did not start: {watcher.communicate(timeout=10)[1][-2000:]}"
        start = json.loads(first)["start"]
        assert start > 0, "the watcher does not see pw0"
        began = time.monotonic()
        run("ip", "-n", namespace, "-batch", str(batch), timeout=120)
        storm_s = time.monotonic() - began
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
    reports = [json.loads(line) for line in out.splitlines()]
    assert watcher.returncode == 0, f"the watcher died: {err[-2000:]}"
    seen = {report.get("ifindex", start) for report in reports if "ifindex" in report}
    assert seen <= {start}, f"pw0 reported as {seen} during a {storm_s:.1f} s storm"
    end = reports[-1]
    assert end["end"] == start
    assert end["counters"].get("events_overrun", 0) >= 1, (
        f"the storm did not overrun the event socket: {end['counters']}"
    )
