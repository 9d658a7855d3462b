"""KernelPath's choice of engine and what the workers are told about it, with stand-ins
for the two engines (the real ones are exercised in tests/bpf and tests/netns)."""

from __future__ import annotations

import asyncio
from typing import Any

from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.supervisor.bpfload import BpfError
from portier.supervisor.kernelpath import KernelPath


class FakeNft:
    def __init__(self) -> None:
        self.enabled = True
        self.reason = ""
        self.started = 0

    async def start(self, *args: Any) -> None:
        self.started += 1

    async def remove(self) -> None:
        pass

    async def sync(self, *args: Any) -> None:
        pass

    def view(self) -> dict[str, Any]:
        return {"enabled": self.enabled}


class FakeBpf:
    def __init__(self) -> None:
        self.fail_sync = False
        self.removed = 0

    async def start(self, *args: Any) -> None:
        pass

    def sync(self, *args: Any) -> None:
        if self.fail_sync:
            raise BpfError(12, "map update failed")

    def remove(self) -> None:
        self.removed += 1

    @staticmethod
    def clean_up_everywhere() -> int:
        return 0


def test_a_runtime_fallback_tells_the_workers_at_once() -> None:
    """The kernel stops answering NS when BPF gives way to nftables: the topology that
    says so must be replicated then, not with whatever topology change comes next."""
    topology, neighbors = Topology(), NeighborCache()
    told: list[bool] = []

    async def replicate() -> None:
        told.append(topology.kernel_answers)

    async def run() -> None:
        bpf = FakeBpf()
        path = KernelPath("bpf", FakeNft(), bpf, on_answers_changed=replicate)  # type: ignore[arg-type]
        await path.start(topology, neighbors, 0.0)
        assert (path.using, told) == ("bpf", [True])
        await path.sync(topology, neighbors, 1.0)
        assert told == [True]  # nothing changed: nothing replicated
        bpf.fail_sync = True
        await path.sync(topology, neighbors, 2.0)
        assert path.using == "nftables" and "map update failed" in path.fallback
        assert bpf.removed == 1
        assert told == [True, False]
        await path.remove()
        assert told == [True, False]  # off answers no more than nftables did

    asyncio.run(run())


def test_nftables_configured_never_claims_kernel_answers() -> None:
    topology, neighbors = Topology(), NeighborCache()
    told: list[bool] = []

    async def replicate() -> None:
        told.append(topology.kernel_answers)

    async def run() -> None:
        path = KernelPath("nftables", FakeNft(), FakeBpf(), on_answers_changed=replicate)  # type: ignore[arg-type]
        await path.start(topology, neighbors, 0.0)
        assert path.using == "nftables" and not topology.kernel_answers and told == []

    asyncio.run(run())
