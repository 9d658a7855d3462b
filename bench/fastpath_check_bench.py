"""How long the fast path's consistency check holds the supervisor's event loop.

Run (root): .venv/bin/python bench/fastpath_check_bench.py [--neighbors N] [--rounds R]
Programs N neighbors into nftables inside a network namespace of its own (through a
wrapper `ip netns exec NS nft`), then measures, with a 1 ms ticker on the same loop, the
longest the loop was held during (a) the check as it was done before: two listings of the
whole table, each parsed on the loop, and the comparison on the loop, and (b)
`FastPath.check`: one listing, parsed item by item and compared in a thread.  Prints the
listing's size, the wall time and the longest stall of each, and their ratio, all
measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.supervisor.fastpath import FAMILY, TABLE, FastPath, drift_between, read_listing

NFT = "/usr/sbin/nft"


def ip(namespace: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "-n", namespace, *argv], check=True, capture_output=True, text=True
    ).stdout


def build_state(namespace: str, count: int) -> tuple[Topology, NeighborCache]:
    topology = Topology()
    topology.create_group("lan")
    for name in ("m1", "m2"):
        topology.bind(name)
        topology.add_to_group(name, "lan", upstream=name == "m1")
        link = json.loads(ip(namespace, "-j", "link", "show", name))[0]
        mac = bytes.fromhex(link["address"].replace(":", ""))
        topology.update_link(name, ifindex=link["ifindex"], mac=mac, mtu=1500)
    neighbors = NeighborCache(capacity=count + 10)
    base = bytes.fromhex("20010db8000100000000000000000000")
    for n in range(count):
        address = base[:12] + n.to_bytes(4, "big")
        neighbors.put(Neighbor("lan", address, "m2", b"\x02\x00" + n.to_bytes(4, "big")))
    return topology, neighbors


async def longest_stall(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(wall seconds of `work`, longest the loop was held meanwhile, in seconds)."""
    stall = 0.0
    done = False

    async def ticker() -> None:
        nonlocal stall
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            stall = max(stall, time.perf_counter() - before - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    await work()
    wall = time.perf_counter() - start
    done = True
    await task
    return wall, stall


async def measure(wrapper: Path, namespace: str, count: int, rounds: int) -> None:
    topology, neighbors = build_state(namespace, count)
    fast = FastPath(nft=str(wrapper), kernel_cleanup=False)
    await fast.start(topology, neighbors, 0.0)
    assert fast.active and fast.view()["neighbors"] == count, fast.view()

    async def before() -> None:
        for listing in range(2):  # the check's listing, then the packet count's
            ok, out = await fast._run(None, "list", "table", FAMILY, TABLE)
            assert ok
            kernel = read_listing(out)  # on the loop, as before
            if listing == 0:
                assert drift_between(fast.programmed, kernel) == 0

    async def now() -> None:
        assert await fast.check(topology, neighbors, 1.0) == 0

    size = len((await fast._run(None, "list", "table", FAMILY, TABLE))[1])
    results: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
    for _ in range(rounds):
        results["before"].append(await longest_stall(before))
        results["now"].append(await longest_stall(now))
    await fast.remove()
    print(f"{count} neighbors programmed; one listing is {size / 1e6:.2f} MB of JSON")
    medians = {}
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        stall = statistics.median(r[1] for r in runs)
        medians[name] = stall
        print(
            f"  {name:>6}: check takes {wall * 1000:7.1f} ms,"
            f" longest loop stall {stall * 1000:7.1f} ms (median of {rounds})"
        )
    print(f"  loop stall before / now: {medians['before'] / max(medians['now'], 1e-6):.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbors", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    namespace = "ptbench" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for a, b in (("m1", "p1"), ("m2", "p2")):
                ip(namespace, "link", "add", a, "type", "veth", "peer", "name", b)
                ip(namespace, "link", "set", a, "up")
                ip(namespace, "link", "set", b, "up")
            wrapper = Path(workdir) / "nft"
            wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {NFT} "$@"\n')
            wrapper.chmod(0o755)
            asyncio.run(measure(wrapper, namespace, args.neighbors, args.rounds))
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
