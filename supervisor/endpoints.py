"""The supervisor's sockets: where they are bound, who may connect, and their removal.

The worker channel (ROUTER, ipc, no access check beyond the runtime dir), the control
socket (ROUTER on ipc, mode 0660 for the control group, and the ZAP check of every
peer's credentials), TCP control only with CURVE, and the event stream (PUB on ipc).
Socket files a killed daemon left are replaced; on stop every socket is closed and its
file removed.  Nothing here reads or writes the proxy's state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth

from portier.config import Config
from portier.supervisor.access import (
    DOMAIN,
    ZapHandler,
    group_id,
    load_authorized_keys,
    secure_socket_file,
)
from portier.supervisor.control import TRANSPORT_MAX_BYTES, ControlServer, Dispatch

log = logging.getLogger("portier.supervisor")

WORKERS_SOCKET = "workers.sock"
EVENTS_SOCKET = "events.sock"


class Endpoints:
    def __init__(self, context: zmq.asyncio.Context, config: Config) -> None:
        self.context = context
        self.config = config
        self.runtime_dir = config.runtime_dir
        self.workers_path = self.runtime_dir / WORKERS_SOCKET
        self.events_path = self.runtime_dir / EVENTS_SOCKET
        self.zap: ZapHandler | None = None
        self.sockets: list[zmq.asyncio.Socket] = []

    def bind(
        self,
        channel: zmq.asyncio.Socket,
        dispatch: Dispatch,
        control_servers: list[ControlServer],
    ) -> zmq.asyncio.Socket:
        """Bind every socket; the control servers are appended, the event socket returned."""
        config = self.config
        gid = group_id(config.control_group)
        if gid is None:
            log.warning(
                "control group %s does not exist: only root may use the control socket",
                config.control_group,
            )
        authorized = (
            load_authorized_keys(config.curve_authorized_keys)
            if config.curve_authorized_keys
            else set()
        )
        self.zap = ZapHandler(self.context, gid, authorized)
        channel.setsockopt(zmq.ROUTER_MANDATORY, 1)
        channel.setsockopt(zmq.ROUTER_HANDOVER, 1)
        channel.setsockopt(zmq.LINGER, 0)
        self._bind_ipc(channel, self.workers_path, None)
        self.sockets.append(channel)

        control = self._control_socket()
        self._bind_ipc(control, config.control_path, gid)
        control_servers.append(ControlServer(control, dispatch))
        if config.control_tcp:
            assert config.curve_secret_key is not None
            public, secret = zmq.auth.load_certificate(str(config.curve_secret_key))
            tcp = self._control_socket()
            tcp.curve_server = True
            tcp.curve_publickey, tcp.curve_secretkey = public, secret
            tcp.bind(config.control_tcp)
            control_servers.append(ControlServer(tcp, dispatch))
            log.info("control also on %s (CURVE)", config.control_tcp)

        events = self.context.socket(zmq.PUB)
        self.sockets.append(events)
        events.setsockopt(zmq.LINGER, 0)
        events.setsockopt(zmq.SNDHWM, 10_000)
        events.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
        self._bind_ipc(events, self.events_path, gid)
        return events

    def _control_socket(self) -> zmq.asyncio.Socket:
        sock = self.context.socket(zmq.ROUTER)
        self.sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_MAX_BYTES)
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
        return sock

    @staticmethod
    def _bind_ipc(sock: zmq.asyncio.Socket, path: Path, gid: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a daemon that was killed
        sock.bind(f"ipc://{path}")
        secure_socket_file(path, gid)

    def close(self, also_remove: Iterable[Path] = ()) -> None:
        if self.zap is not None:
            self.zap.close()
        for sock in self.sockets:
            sock.close(linger=0)
        for path in (self.workers_path, self.config.control_path, self.events_path, *also_remove):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
