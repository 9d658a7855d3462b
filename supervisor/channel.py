"""The worker channel: the ROUTER socket the workers connect to, and what travels on it.

Each worker's DEALER has its interface name as routing id.  This module sends (one
message, a snapshot, a sequence-numbered delta to every connected worker, heartbeats)
and runs the receive loop, which decodes and validates each message and hands it to a
handler.  A malformed message costs that message; an unexpected error ends the loop,
which the loop supervisor restarts.  It never changes the state itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from portier import schema
from portier.replication import snapshot_to_wire
from portier.schema import SchemaError
from portier.supervisor.state import Change, ProxyState
from portier.supervisor.workerpool import WorkerHandle, WorkerPool, WorkerState

log = logging.getLogger("portier.supervisor")

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]
# Errors a malformed but schema-valid report can raise while being applied.
BAD_REPORT = (SchemaError, KeyError, TypeError, ValueError)


class WorkerChannel:
    def __init__(self, socket: zmq.asyncio.Socket, state: ProxyState, pool: WorkerPool) -> None:
        self.socket = socket
        self.state = state
        self.pool = pool

    async def send(self, interface: str, message: dict[str, Any]) -> bool:
        try:
            await self.socket.send_multipart([interface.encode(), schema.encode(message)])
        except zmq.ZMQError as exc:
            log.debug("cannot send to worker %s: %s", interface, exc)
            return False
        return True

    async def send_snapshot(self, handle: WorkerHandle) -> None:
        handle.seq = 0
        state = snapshot_to_wire(self.state.topology, self.state.neighbors)
        await self.send(handle.interface, {"kind": "snapshot", "seq": 0, "state": state})

    async def broadcast(self, changes: list[Change], exclude: str | None = None) -> None:
        if not changes:
            return
        for handle in list(self.pool.handles.values()):
            if not handle.connected or handle.interface == exclude:
                continue
            handle.seq += 1
            await self.send(
                handle.interface, {"kind": "delta", "seq": handle.seq, "changes": changes}
            )

    async def heartbeat(self) -> None:
        for handle in list(self.pool.handles.values()):
            if handle.state == WorkerState.RUNNING:
                await self.send(handle.interface, {"kind": "heartbeat"})

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
