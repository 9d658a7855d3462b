"""How long saving the state holds the supervisor's event loop, with a full cache.

Run: .venv/bin/python bench/state_save_bench.py [--neighbors N] [--rounds R]
Builds a state with N neighbors and, in a temporary folder, measures (a) a whole save done
on the caller's thread, as every save was done before (snapshot, document, pack, write,
fsync), (b) the snapshot `StateSaver` takes on the loop, and (c) the longest stall a
1 ms ticker sees on the loop while `StateSaver.save` runs.  Medians of R rounds, and the
ratio of (a) to (c), all measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.supervisor.persistence import StateSaver, save_state, take_snapshot

CONFIG = {"groups": [{"name": "lan", "upstream": None, "members": ["vm1"]}]}


def build_state(count: int) -> tuple[Topology, NeighborCache]:
    topology = Topology()
    topology.create_group("lan")
    topology.bind("vm1")
    topology.add_to_group("vm1", "lan")
    neighbors = NeighborCache(capacity=count + 10)
    for n in range(count):
        address = bytes(12) + n.to_bytes(4, "big")
        neighbors.put(Neighbor("lan", address, "vm1", b"\x02" * 6, False, 1.0, 1.0, 2.0))
    return topology, neighbors


async def saver_stall(saver: StateSaver, topology: Topology, neighbors: NeighborCache) -> float:
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    status = await saver.save(topology, neighbors, CONFIG)
    assert status.ok, status
    done = True
    await task
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbors", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    topology, neighbors = build_state(args.neighbors)
    whole, snapshot, stall = [], [], []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
        state_dir = Path(folder)
        saver = StateSaver(state_dir)
        for _ in range(args.rounds):
            start = time.perf_counter()
            save_state(state_dir, topology, neighbors, CONFIG)
            whole.append(time.perf_counter() - start)
            start = time.perf_counter()
            take_snapshot(topology, neighbors, CONFIG)
            snapshot.append(time.perf_counter() - start)
            stall.append(asyncio.run(saver_stall(saver, topology, neighbors)))
        saver.close()
    a, b, c = (statistics.median(x) * 1000 for x in (whole, snapshot, stall))
    print(f"{args.neighbors} neighbors, medians of {args.rounds}:")
    print(f"  whole save on the caller's thread (before): {a:7.1f} ms")
    print(f"  StateSaver's snapshot on the loop:          {b:7.1f} ms")
    print(f"  longest loop stall during StateSaver.save:  {c:7.1f} ms")
    print(f"  loop held before / now: {a / max(c, 1e-3):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
