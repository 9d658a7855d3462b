"""Interim stand-ins with the fast path's and the saver's final interfaces (to be replaced).

The fast path and the state saver are being reworked elsewhere; until that lands these
adapters give the rest of the supervisor the interfaces it is written against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.status import OK, Code, Status
from portier.supervisor import fastpath as _fastpath
from portier.supervisor.persistence import load_state, save_state

log = logging.getLogger("portier.supervisor")

__all__ = ["FastPath", "StateSaver", "load_state"]

CHECK_S = 10.0


class FastPath:
    def __init__(self, *, enabled: bool = True, nft: str = "nft") -> None:
        self._inner = _fastpath.FastPath(enabled=enabled, nft=nft)
        self._lock = asyncio.Lock()
        self._packets = 0
        self._next_check = 0.0

    @property
    def active(self) -> bool:
        return self._inner.active

    async def start(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        async with self._lock:
            try:
                await self._inner.start()
            except OSError as exc:
                self._inner._give_up(str(exc))
        self._next_check = now + CHECK_S

    async def sync(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        async with self._lock:
            try:
                await self._inner.sync(topology, neighbors, now)
            except OSError as exc:
                self._inner._give_up(str(exc))

    async def maintain(self, topology: Topology, neighbors: NeighborCache, now: float) -> None:
        if not self.active or now < self._next_check:
            return
        self._next_check = now + CHECK_S
        await self.check(topology, neighbors, now)

    async def check(self, topology: Topology, neighbors: NeighborCache, now: float) -> int:
        async with self._lock:
            try:
                drift = await self._inner.check(topology, neighbors, now)
                self._packets = await self._inner.packets()
            except OSError as exc:
                self._inner._give_up(str(exc))
                return 0
        return drift

    async def set_enabled(
        self, enabled: bool, topology: Topology, neighbors: NeighborCache, now: float
    ) -> None:
        async with self._lock:
            if not enabled:
                await self._inner.remove()
                self._inner.enabled = False
                self._inner.reason = "disabled by configuration"
                return
            self._inner = _fastpath.FastPath(enabled=True, nft=self._inner.nft or "nft")
            await self._inner.start()
            await self._inner.sync(topology, neighbors, now)

    async def remove(self) -> None:
        async with self._lock:
            with contextlib.suppress(OSError):
                await self._inner.remove()

    def view(self) -> dict[str, Any]:
        return {
            **self._inner.view(),
            "kernel_packets": self._packets,
            "retry_in_s": None,
        }


class StateSaver:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.error: str | None = None
        self.failing_since: float | None = None
        self.saved_at: float | None = None
        self.failures = 0

    async def save(
        self, topology: Topology, neighbors: NeighborCache, applied_config: dict[str, Any]
    ) -> Status:
        try:
            save_state(self.state_dir, topology, neighbors, applied_config)
        except OSError as exc:
            self.failures += 1
            self.error = exc.strerror or str(exc)
            if self.failing_since is None:
                self.failing_since = time.time()
            log.error("cannot write state to %s: %s", self.state_dir, self.error)
            return Status(Code.UNEXPECTED_FAILURE, self.error)
        if self.error is not None:
            log.info("state saved again")
        self.error = self.failing_since = None
        self.saved_at = time.time()
        return OK

    def view(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "failing_since": self.failing_since,
            "saved_at": self.saved_at,
            "failures": self.failures,
        }
