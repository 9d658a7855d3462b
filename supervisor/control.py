"""The control socket: requests in, replies out, one operation at a time.

A ROUTER socket on ipc (the path is configurable) and, only with CURVE, on TCP.  Every
request is a msgpack map {v, op, id, args}; every reply {v, id, ok, code, message,
result} plus `outcome` for the original API's operations.  Whatever arrives, a reply
goes back: malformed, oversized or wrong-version requests get an error code and a
message; the daemon's state is untouched by them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from portier import schema
from portier.schema import SchemaError
from portier.status import Code, Status

log = logging.getLogger("portier.supervisor")

# Beyond this ZeroMQ drops the connection instead of buffering; below it, the schema's
# own limit answers with an error reply.
TRANSPORT_MAX_BYTES = 1024 * 1024

Dispatch = Callable[[str, dict[str, Any]], Awaitable[tuple[Status, Any, str | None]]]


def _request_id(raw: bytes) -> Any:
    """Best effort: the id of a request that failed validation, so the client can match."""
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # the bytes are garbage: there is no id to echo
        return None
    value = data.get("id") if isinstance(data, dict) else None
    # A bool is an int to Python but not an id to the schema: echoing it would make the
    # reply itself unreadable to the client.
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    return value


class ControlServer:
    def __init__(self, socket: zmq.asyncio.Socket, dispatch: Dispatch) -> None:
        self.socket = socket
        self.dispatch = dispatch
        self.requests: Counter[tuple[str, str]] = Counter()  # (op, code name)

    async def serve(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            if len(frames) < 2:
                continue
            envelope, raw = frames[:-1], frames[-1]
            reply = await self.handle(raw)
            try:
                await self.socket.send_multipart([*envelope, reply])
            except zmq.ZMQError as exc:
                log.debug("control reply not delivered: %s", exc)

    async def handle(self, raw: bytes) -> bytes:
        try:
            request = schema.decode_request(raw)
        except SchemaError as exc:
            self.requests[("invalid", Code(exc.status.code).name)] += 1
            return schema.reply(_request_id(raw), exc.status.wrap("Bad request"))
        op, request_id = request["op"], request["id"]
        try:
            status, result, outcome = await self.dispatch(op, request["args"])
        except Exception:  # a bug must cost one reply, never the daemon
            log.exception("control operation %s failed", op)
            status, result, outcome = (
                Status(Code.UNEXPECTED_FAILURE, f"Internal error while running {op}; see the log"),
                None,
                "FAILED",
            )
        self.requests[(op, Code(status.code).name)] += 1
        reply = {
            "id": request_id,
            "ok": status.code in (Code.OK, Code.NO_OPERATION),
            "code": int(status.code),
            "message": status.text(),
            "result": result,
        }
        if outcome is not None:
            reply["outcome"] = outcome
        return schema.encode(reply)
