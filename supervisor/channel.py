"""The worker channel: the ROUTER socket the workers connect to, and what travels on it.

Each worker's DEALER has its interface name as routing id.  This module sends (one
message, a snapshot, a sequence-numbered delta to every connected worker, heartbeats)
and runs the receive loop, which decodes and validates each message and hands it to a
handler.

Broadcast changes wait in each worker's `pending` list until the loop is next idle (or
until anything else is sent to that worker, so a worker sees its messages in the order
they were made) and then go out as one delta, topology ops coalesced.  When hundreds of
workers report at once (links appearing or vanishing), each report's change would
otherwise be one message to every worker, carrying the whole topology: N² messages
that each worker must decode.

A malformed message costs that message; an unexpected error ends the receive loop,
which the loop supervisor restarts.  This module never changes the state itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from portier import schema
from portier.replication import coalesce, snapshot_to_wire
from portier.schema import SchemaError
from portier.supervisor.state import Change, ProxyState
from portier.supervisor.workerpool import WorkerHandle, WorkerPool

log = logging.getLogger("portier.supervisor")

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]
# Errors a malformed but schema-valid report can raise while being applied.
BAD_REPORT = (SchemaError, KeyError, TypeError, ValueError)


class WorkerChannel:
    def __init__(self, socket: zmq.asyncio.Socket, state: ProxyState, pool: WorkerPool) -> None:
        self.socket = socket
        self.state = state
        self.pool = pool
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, interface: str, message: dict[str, Any]) -> bool:
        handle = self.pool.handles.get(interface)
        if handle is not None and handle.pending:
            await self._flush_one(handle, {})
        return await self._send(interface, schema.encode(message))

    async def _send(self, interface: str, encoded: bytes) -> bool:
        try:
            await self.socket.send_multipart([interface.encode(), encoded])
        except zmq.ZMQError as exc:
            log.debug("cannot send to worker %s: %s", interface, exc)
            return False
        return True

    async def send_snapshot(self, handle: WorkerHandle) -> None:
        handle.seq = 0
        handle.pending.clear()  # the snapshot holds them
        state = snapshot_to_wire(self.state.topology, self.state.neighbors)
        await self._send(
            handle.interface, schema.encode({"kind": "snapshot", "seq": 0, "state": state})
        )

    async def broadcast(self, changes: list[Change], exclude: str | None = None) -> None:
        """Queue `changes` for every connected worker but `exclude`; sent by `flush`."""
        if not changes:
            return
        for handle in self.pool.handles.values():
            if handle.connected and handle.interface != exclude:
                handle.pending.extend(changes)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self.flush())

    async def flush(self) -> None:
        """Send every worker its pending changes as one delta; equal deltas packed once."""
        packed: dict[tuple[int, ...], tuple[list[Change], Callable[[int], bytes]]] = {}
        for handle in list(self.pool.handles.values()):
            if handle.pending:
                await self._flush_one(handle, packed)

    async def _flush_one(
        self,
        handle: WorkerHandle,
        packed: dict[tuple[int, ...], tuple[list[Change], Callable[[int], bytes]]],
    ) -> None:
        changes, handle.pending = coalesce(handle.pending), []
        if not handle.connected:
            return
        key = tuple(map(id, changes))  # `packed` holds the changes, so ids stay unique
        if key not in packed:
            packed[key] = (changes, schema.delta_encoder(changes))
        handle.seq += 1
        await self._send(handle.interface, packed[key][1](handle.seq))

    async def stop_workers(self) -> None:
        for handle in list(self.pool.handles.values()):
            if handle.connected:
                await self.send(handle.interface, {"kind": "command", "command": "stop"})

    async def receive(self, handler: Handler) -> None:
        """The receive loop: runs until cancelled; unexpected errors end it."""
        while True:
            frames = await self.socket.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                interface = frames[0].decode()
                message = schema.decode_worker(frames[1])
            except (UnicodeDecodeError, SchemaError) as exc:
                log.warning("bad message on the worker channel: %s", exc)
                continue
            try:
                await handler(interface, message)
            except BAD_REPORT as exc:
                log.warning("bad %s from worker %s: %s", message.get("kind"), interface, exc)
