"""LinkWatch's kernel-side event filter, against the real kernel.

Every worker hears every link and address event of its namespace: at 512 interfaces one
worker's start (its sockets turn allmulti on) woke 511 others.  The filter lets through
only events of the watched ifindex, and every link event while the interface is absent,
so deletion and re-creation under the same name are still seen.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest
from lab import run

WATCHER = """
import json, select, sys
from portier.workers.linkwatch import LinkWatch
watch = LinkWatch("fw0")
for line in sys.stdin:
    readable = bool(select.select([watch.fileno()], [], [], float(line))[0])
    changed = watch.read() if readable else False
    state = watch.state
    print(json.dumps({"readable": readable, "changed": changed, "ifindex": state.ifindex,
                      "mtu": state.mtu}), flush=True)
"""


@pytest.fixture
def namespace():
    name = f"plf{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    try:
        for pair in ("fw0", "fx0"):
            run("ip", "-n", name, "link", "add", pair, "type", "veth", "peer", "name", pair + "p")
            run("ip", "-n", name, "link", "set", pair, "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def test_only_the_watched_interfaces_events_wake_the_watcher(namespace):
    argv = ["ip", "netns", "exec", namespace, sys.executable, "-c", WATCHER]
    watcher = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert watcher.stdin is not None and watcher.stdout is not None

    def look(wait_s: float) -> dict:
        watcher.stdin.write(f"{wait_s}\n")
        watcher.stdin.flush()
        return json.loads(watcher.stdout.readline())

    try:
        first = look(0.5)  # whatever came before the filter was on
        while first["readable"]:
            first = look(0.5)
        ifindex = first["ifindex"]
        assert ifindex
        # Another interface changes, link and addresses: nothing reaches the watcher.
        run("ip", "-n", namespace, "link", "set", "fx0", "mtu", "1400")
        run("ip", "-n", namespace, "addr", "add", "2001:db8::9/64", "dev", "fx0", "nodad")
        run("ip", "-n", namespace, "link", "set", "fx0", "down")
        assert look(1.0)["readable"] is False, "another interface's event woke the watcher"
        # Its own interface changes: seen at once.
        run("ip", "-n", namespace, "link", "set", "fw0", "mtu", "1300")
        seen = look(5.0)
        assert seen["readable"] and seen["changed"] and seen["mtu"] == 1300
        # Deleted, then made again under the same name: the new ifindex is followed.
        run("ip", "-n", namespace, "link", "del", "fw0")
        gone = look(5.0)
        assert gone["changed"] and gone["ifindex"] == 0
        run("ip", "-n", namespace, "link", "add", "fw0", "type", "veth", "peer", "name", "fw0p")
        back = look(5.0)
        while back["ifindex"] == 0 and back["readable"]:
            back = look(5.0)
        assert back["ifindex"] not in (0, ifindex), back
        # And the filter follows the new one: the other interface is quiet again.
        run("ip", "-n", namespace, "link", "set", "fx0", "mtu", "1280")
        assert look(1.0)["readable"] is False
    finally:
        watcher.stdin.close()
        watcher.wait(10)
