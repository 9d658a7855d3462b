"""The control client: requests to portierd over ZeroMQ, with ids and timeouts.

Used by `portierctl` and by anything else that drives the daemon.  It does I/O (a
DEALER socket) and lives apart from the sans-I/O core.  Failures come back as
`ControlError` with a Status: the daemon's own error replies, a daemon that is not
running, a socket this user may not open, a refusal by the daemon's access check, or
no answer within the timeout.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.utils.monitor

from portier import schema
from portier.schema import SchemaError
from portier.status import Code, Status

DEFAULT_SOCKET = "/run/portier/control.sock"
DEFAULT_TIMEOUT_S = 10.0
_AUTH_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


class ControlError(Exception):
    def __init__(self, status: Status) -> None:
        super().__init__(str(status))
        self.status = status


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    code: int
    message: str
    result: Any
    outcome: str | None = None

    @property
    def status(self) -> Status:
        return Status(self.code, self.message)


@dataclass(frozen=True, slots=True)
class Curve:
    """Keys for TCP control: the server's public key and this client's key pair (z85)."""

    server_public: bytes
    public: bytes
    secret: bytes


def endpoint_for(socket_path: str) -> str:
    return socket_path if "://" in socket_path else f"ipc://{socket_path}"


def _check_ipc(path: str) -> None:
    try:
        os.stat(path)
    except PermissionError:
        raise ControlError(
            Status(
                Code.BAD_PERMISSIONS,
                f"Permission denied on {path}: run as root or as a member of the control group",
            )
        ) from None
    except FileNotFoundError:
        raise ControlError(
            Status(
                Code.RESULT_UNAVAILABLE,
                f"portierd is not running: no control socket at {path} "
                "(start it, or point --socket at its runtime directory)",
            )
        ) from None
    if not os.access(path, os.R_OK | os.W_OK):
        raise ControlError(
            Status(
                Code.BAD_PERMISSIONS,
                f"Permission denied on {path}: run as root or as a member of the control group",
            )
        )


class ControlClient:
    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        curve: Curve | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint_for(socket_path)
        if self.endpoint.startswith("ipc://"):
            _check_ipc(self.endpoint[len("ipc://") :])
        elif curve is None:
            raise ControlError(
                Status(Code.INVALID_ARGUMENT, "TCP control needs CURVE keys (--server-key, --key)")
            )
        self.timeout_s = timeout_s
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            self.socket.curve_serverkey = curve.server_public
            self.socket.curve_publickey = curve.public
            self.socket.curve_secretkey = curve.secret
        self.monitor = self.socket.get_monitor_socket(_AUTH_FAILED)
        self.socket.connect(self.endpoint)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, payload: bytes) -> None:
        self.socket.send(payload)

    def receive(self, request_id: Any = None, *, any_reply: bool = False) -> dict[str, Any]:
        """Wait for the reply carrying `request_id` (late answers to earlier requests are
        skipped), or for whatever reply comes first with `any_reply`."""
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                raise ControlError(
                    Status(Code.TIMEOUT, f"portierd did not answer within {self.timeout_s:g} s")
                )
            ready = dict(poller.poll(math.ceil(remaining_ms)))
            if self.monitor in ready:
                zmq.utils.monitor.recv_monitor_message(self.monitor)
                raise ControlError(
                    Status(Code.BAD_PERMISSIONS, "portierd refused this client: not allowed")
                )
            if self.socket in ready:
                try:
                    reply = schema.decode_reply(self.socket.recv())
                except SchemaError as exc:
                    raise ControlError(exc.status.wrap("Unreadable reply from portierd")) from None
                if any_reply or reply["id"] == request_id or reply["id"] is None:
                    return reply

    def request(self, op: str, **args: Any) -> Reply:
        """Send one request and return its reply, success or not."""
        request_id = next(self._ids)
        self.socket.send(
            schema.request(op, request_id, {k: v for k, v in args.items() if v is not None})
        )
        data = self.receive(request_id)
        return Reply(
            ok=data["ok"],
            code=data["code"],
            message=data["message"],
            result=data.get("result"),
            outcome=data.get("outcome"),
        )

    def call(self, op: str, **args: Any) -> Any:
        """Like request, but a failed reply raises ControlError; returns the result."""
        reply = self.request(op, **args)
        if not reply.ok:
            raise ControlError(reply.status)
        return reply.result


def watch(
    socket_path: str, *, timeout_s: float | None = None, context: zmq.Context | None = None
) -> Iterator[dict[str, Any]]:
    """Events from portierd's PUB socket (events.sock beside the control socket)."""
    path = Path(socket_path).with_name("events.sock")
    _check_ipc(str(path))
    context = context or zmq.Context.instance()
    subscriber = context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    subscriber.connect(f"ipc://{path}")
    try:
        while True:
            if timeout_s is not None and not subscriber.poll(timeout_s * 1000):
                return
            _topic, payload = subscriber.recv_multipart()
            try:
                yield schema.unpack(payload, schema.MAX_WORKER_BYTES)
            except SchemaError:
                continue
    finally:
        subscriber.close(linger=0)
