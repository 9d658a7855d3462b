"""The supervisor's link follower against the real kernel: hundreds of links at once.

The follower runs inside a namespace of its own with a small receive buffer, and its
hand-off blocks the event loop for a while each time (a supervisor busy starting
workers), so the kernel overruns its socket (ENOBUFS) while 300 veth pairs are created
and then deleted.  Afterwards its table must be exactly the kernel's, by a re-dump.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest
from lab import run

PAIRS = 300

FOLLOWER = """
import asyncio, json, subprocess, sys, time
from portier.supervisor.links import LinkFollower

def kernel_links():
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}

async def main(batches):
    handoffs = 0
    async def on_change(links):
        nonlocal handoffs
        handoffs += 1
        time.sleep(0.3)  # the loop stalls: notifications pile up in the kernel
    follower = LinkFollower(on_change, rcvbuf_bytes=4096)
    task = asyncio.create_task(follower.run())
    while follower.dumps == 0:
        await asyncio.sleep(0.01)
    results, veths, shortcuts = [], [], []
    for batch in batches:
        subprocess.run(["ip", "-batch", batch], check=True)
        deadline = time.monotonic() + 30
        while set(follower.names()) != kernel_links() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        results.append(set(follower.names()) == kernel_links())
        veths.append(sum(l.kind == "veth" for l in follower.links.values()))
        shortcuts.append(sum(map(follower.veth_peer_elsewhere, follower.links)))
    print(json.dumps({"matched": results, "veths": veths, "shortcuts": shortcuts,
                      "overruns": follower.overruns,
                      "dumps": follower.dumps, "handoffs": handoffs, "links": len(follower.links)}))
    task.cancel()

asyncio.run(main(sys.argv[1:]))
"""


@pytest.fixture
def namespace(tmp_path):
    name = f"plf{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def test_hundreds_of_links_at_once_overrun_and_the_table_still_matches(namespace, tmp_path):
    create, delete = tmp_path / "create", tmp_path / "delete"
    create.write_text("".join(f"link add pf{i} type veth peer name pg{i}\n" for i in range(PAIRS)))
    delete.write_text("".join(f"link del pf{i}\n" for i in range(PAIRS)))
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", FOLLOWER, create, delete],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print(f"link follower: {report}")
    assert report["matched"] == [True, True], report
    assert report["overruns"] >= 1, f"the storm never overran the socket: {report}"
    assert report["dumps"] == 1 + report["overruns"], report
    assert report["links"] == 1  # lo, once the pairs are gone
    # Both ends of each pair are here: no veth whose peer is elsewhere (the BPF shortcut).
    assert report["veths"] == [2 * PAIRS, 0] and report["shortcuts"] == [0, 0], report
