"""Who may use the control and event sockets.

The socket files are owned by the daemon's user and the control group, mode 0660, so
the kernel refuses everyone else at connect.  ZAP checks again, per connection, with the
peer's credentials as ZeroMQ reports them for ipc ("localhost:UID:GID:PID"): root, the
daemon's own user, and members of the control group (primary or supplementary) pass.
Over TCP only CURVE clients whose public key is in the authorized folder pass.
"""

from __future__ import annotations

import grp
import logging
import os
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.utils.z85

from portier.config import load_curve_authorized_keys

log = logging.getLogger("portier.supervisor")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN = b"portier"


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def secure_socket_file(path: Path, gid: int | None) -> None:
    """0660 and the control group when it exists; 0600 otherwise."""
    if gid is not None:
        try:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
            return
        except OSError as exc:
            log.warning("cannot give %s to group %d: %s", path, gid, exc)
    os.chmod(path, 0o600)


def _supplementary_groups(pid: int) -> set[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def ipc_peer_allowed(address: bytes, control_gid: int | None) -> tuple[bool, str]:
    """Decide from a ZAP address of an ipc peer; returns (allowed, who)."""
    try:
        _host, uid_text, gid_text, pid_text = address.decode().rsplit(":", 3)
        uid, gid, pid = int(uid_text), int(gid_text), int(pid_text)
    except ValueError:
        return False, f"unparsable peer {address!r}"
    who = f"uid {uid} gid {gid} pid {pid}"
    if uid in (0, os.getuid()):
        return True, who
    if control_gid is not None and (
        gid == control_gid or control_gid in _supplementary_groups(pid)
    ):
        return True, who
    return False, who


def load_authorized_keys(folder: Path, source: Path | str = "configuration") -> set[bytes]:
    """Public keys (z85) from the zmq certificate files in `folder`.

    A missing folder or an unusable file raises ConfigError (portierd exits 2 with it);
    the configuration loader has already checked them, this catches a change since.
    """
    return load_curve_authorized_keys(folder, source)


class ZapHandler:
    """Answers libzmq's authentication requests for every socket in the context."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        control_gid: int | None,
        authorized_keys: set[bytes] | None = None,
    ) -> None:
        self.socket = context.socket(zmq.REP)
        self.socket.bind(ZAP_ENDPOINT)
        self.control_gid = control_gid
        self.authorized_keys = authorized_keys or set()
        self.refused = 0

    def decide(
        self, mechanism: bytes, address: bytes, credentials: list[bytes]
    ) -> tuple[bool, str]:
        if mechanism == b"NULL":
            return ipc_peer_allowed(address, self.control_gid)
        if mechanism == b"CURVE" and credentials:
            key = zmq.utils.z85.encode(credentials[0])
            return key in self.authorized_keys, f"CURVE key {key.decode()} from {address.decode()}"
        return False, f"mechanism {mechanism.decode(errors='replace')}"

    async def serve(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            version, sequence, _domain, address, _identity, mechanism, *credentials = frames
            allowed, who = self.decide(mechanism, address, credentials)
            if allowed:
                await self.socket.send_multipart(
                    [version, sequence, b"200", b"OK", who.encode(), b""]
                )
            else:
                self.refused += 1
                log.warning("control access refused: %s", who)
                await self.socket.send_multipart(
                    [version, sequence, b"400", b"not allowed", b"", b""]
                )

    def close(self) -> None:
        self.socket.close(linger=0)
