"""After a state change: replicate it, program the fast path, save it, announce it.

Every writer of the authoritative state (control operations, worker reports, the timers,
configuration application) ends a change here, so that the four consequences happen in
one order everywhere: deltas to the workers first (they forward with them at once),
then the kernel fast path, then the state file, then the event stream and readiness.
Saving never blocks the loop and never raises: its outcome comes back as a Status,
which an operation's reply carries.  Learned neighbors and expiries only mark the state
dirty; the timers save and program those at their own cadence.  This module decides
nothing about the state itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.status import OK, Code, Status
from portier.supervisor.events import EventPublisher
from portier.supervisor.state import Change, ProxyState

SAVE_FAILED = "state could not be saved"


class FastPathProgrammer(Protocol):
    async def sync(self, topology: Topology, neighbors: NeighborCache, now: float) -> None: ...


class Saver(Protocol):
    async def save(
        self, topology: Topology, neighbors: NeighborCache, applied_config: dict[str, Any]
    ) -> Status: ...


Broadcast = Callable[[list[Change]], Awaitable[None]]


def with_save_outcome(status: Status, saved: Status) -> Status:
    """An operation's reply: still OK when only the save failed, and saying so."""
    if not status.ok or saved.ok:
        return status
    return Status(Code.OK, SAVE_FAILED, saved.text())


class Committer:
    def __init__(
        self,
        state: ProxyState,
        *,
        broadcast: Broadcast,
        fastpath: FastPathProgrammer,
        saver: Saver,
        events: EventPublisher,
        applied_config: Callable[[], dict[str, Any]],
        on_committed: Callable[[], None] = lambda: None,
        on_fastpath_dirty: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.broadcast = broadcast
        self.fastpath = fastpath
        self.saver = saver
        self.events = events
        self.applied_config = applied_config
        self.on_committed = on_committed
        self.on_fastpath_dirty = on_fastpath_dirty
        self.clock = clock
        self.neighbors_dirty = False  # learned or expired since the last save
        self.fastpath_dirty = False  # the kernel's copy is behind the cache

    async def commit(self, op: str, changes: list[Change] | None = None, **fields: Any) -> Status:
        """Replicate, program, save and announce a change; the save's outcome is returned."""
        await self.broadcast([*(changes or []), *self.state.topology_changed()])
        await self.sync_fastpath()
        saved = await self.save()
        self.events.publish("state", op=op, **fields)
        self.on_committed()
        return saved

    def mark_fastpath_dirty(self) -> None:
        """The kernel is behind: the timers program it soon, batching what comes meanwhile."""
        self.fastpath_dirty = True
        self.on_fastpath_dirty()

    async def sync_fastpath(self) -> None:
        self.fastpath_dirty = False
        await self.fastpath.sync(self.state.topology, self.state.neighbors, self.clock())

    async def save(self) -> Status:
        # Cleared before the save: what changes while it runs marks the state dirty again.
        self.neighbors_dirty = False
        saved = await self.saver.save(
            self.state.topology, self.state.neighbors, self.applied_config()
        )
        if not saved.ok:
            self.neighbors_dirty = True  # the next successful write catches up
        return saved

    def publish(self, kind: str, **fields: Any) -> None:
        self.events.publish(kind, **fields)


__all__ = ["OK", "SAVE_FAILED", "Committer", "with_save_outcome"]
