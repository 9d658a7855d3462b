"""Which kernel data path forwards: the BPF program, else the nftables table, else none.

`[fastpath] engine` names the preferred one.  `bpf` is tried first when asked for; if
it cannot be built, loaded (the verifier), attached or fed, it is removed and nftables
takes over, and `fallback` says why (shown by `portierctl fastpath` and `status`, and
in the metrics).  nftables, when it fails in turn, turns itself off with its own reason
and retries by itself (fastpath.py).  The two are never active at once: starting one
removes whatever the other left, here or from a crashed run, and stopping removes both.
The BPF path is not retried once it failed; a restart or a reload tries it again.

While the BPF path runs, the topology says so (`kernel_answers`): the program answers
the usual multicast NS itself, so the workers leave those to it (answers.py).  Every
change of it is replicated at once (`on_answers_changed`): after a fallback the workers
answer those NS again from the next delta on, not from whatever topology change comes
next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.supervisor.bpfload import BpfError
from portier.supervisor.bpfpath import BpfPath
from portier.supervisor.fastpath import FastPath

log = logging.getLogger("portier.supervisor")


class KernelPath:
    """The fast path the supervisor programs: FastPath's interface over both engines."""

    def __init__(
        self,
        engine: str,
        nft: FastPath,
        bpf: BpfPath | None = None,
        on_answers_changed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`on_answers_changed`: replicate the topology (its `kernel_answers` changed)."""
        self.engine = engine
        self.on_answers_changed = on_answers_changed
        self.nft = nft
        self.bpf = bpf or BpfPath()
        self.using = "off"
        self.fallback = ""
        self.topology: Topology | None = None
        self._lock = asyncio.Lock()

    async def _use(self, engine: str) -> None:
        self.using = engine
        if self.topology is None or self.topology.kernel_answers == (engine == "bpf"):
            return
        self.topology.kernel_answers = engine == "bpf"
        if self.on_answers_changed is not None:
            await self.on_answers_changed()

    @property
    def wants_bpf(self) -> bool:
        return self.engine == "bpf" and self.nft.enabled

    async def start(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        self.topology = topology
        async with self._lock:
            if self.wants_bpf:
                try:
                    await self.bpf.start(topology, neighbors, now)
                except (BpfError, OSError) as exc:
                    await self._give_up_bpf(exc)
                else:
                    await self._use("bpf")
                    self.fallback = ""
                    await self.nft.remove()  # no table an earlier run left forwards beside it
                    log.info("fast path on: BPF tc program")
                    return
            else:
                await asyncio.to_thread(self.bpf.clean_up_everywhere)
            await self.nft.start(topology, neighbors, now)
            await self._use("nftables" if self.nft.enabled else "off")

    async def _give_up_bpf(self, exc: BaseException) -> None:
        self.fallback = f"bpf: {exc}"
        log.warning("BPF fast path unusable (%s); falling back to nftables", exc)
        await asyncio.to_thread(self._remove_bpf)

    def _remove_bpf(self) -> None:
        try:
            self.bpf.remove()
            self.bpf.clean_up_everywhere()
        except (BpfError, OSError) as exc:
            log.error("removing the BPF fast path failed: %s", exc)

    async def _on_bpf(self, step: str, topology: Topology, neighbors: NeighborCache, now: float):
        """Run one BPF step; on failure hand over to nftables. The step's result or None."""
        try:
            if step == "sync":
                self.bpf.sync(topology, neighbors, now)
                return 0
            # The check reads every map entry back (tens of thousands of syscalls at scale):
            # in a thread, as the nft path lists its table, so the loop is never held.  The
            # lock keeps `programmed` still meanwhile.
            if step == "maintain":
                return await asyncio.to_thread(self.bpf.maintain, topology, neighbors, now)
            return await asyncio.to_thread(self.bpf.check, topology, neighbors, now)
        except (BpfError, OSError) as exc:
            await self._give_up_bpf(exc)
            await self._use("nftables")
            await self.nft.start(topology, neighbors, now)
            return None

    async def sync(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        if self.using == "bpf":
            async with self._lock:
                await self._on_bpf("sync", topology, neighbors, now)
            return
        await self.nft.sync(topology, neighbors, now)

    async def maintain(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        if self.using == "bpf":
            async with self._lock:
                await self._on_bpf("maintain", topology, neighbors, now)
            return
        await self.nft.maintain(topology, neighbors, now)

    async def check(self, topology: Topology, neighbors: NeighborCache, now: float) -> int:
        if self.using == "bpf":
            async with self._lock:
                drift = await self._on_bpf("check", topology, neighbors, now)
            return drift or 0
        return await self.nft.check(topology, neighbors, now)

    async def packets(self) -> int:
        if self.using == "bpf":
            return self.bpf.counter("forwarded")
        return await self.nft.packets()

    async def set_enabled(
        self, enabled: bool, topology: Topology, neighbors: NeighborCache, now: float
    ) -> None:
        """`[fastpath] enabled` changed on reload: off removes both, on starts afresh."""
        if enabled == self.nft.enabled:
            return
        if not enabled:
            async with self._lock:
                await asyncio.to_thread(self._remove_bpf)
                await self.nft.set_enabled(False, topology, neighbors, now)
                await self._use("off")
            return
        self.nft.enabled = True
        self.nft.reason = ""
        await self.start(topology, neighbors, now)

    async def remove(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._remove_bpf)
            await self.nft.remove()
            await self._use("off")

    def view(self) -> dict[str, Any]:
        if self.using == "bpf":
            view: dict[str, Any] = {
                "enabled": True,
                "active": True,
                "reason": "",
                "retry_in_s": None,
                **self.bpf.view(),
            }
        else:
            view = self.nft.view()
        return {
            **view,
            "engine": self.using,
            "configured_engine": self.engine,
            "fallback": self.fallback,
        }
