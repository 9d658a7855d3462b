"""The zygote protocol: what portierd and the worker zygote say to each other.

One msgpack map per SEQPACKET packet, each with the version.  portierd asks
`spawn(id, argv)`; the zygote answers `spawned(id, pid)` or `error(id, message)`, says
`ready(pid)` once after it started, and `exited(pid, code)` for every child it reaped
(code as subprocess shows it: the exit status, or minus the signal).  Both ends decode
with `decode`, which refuses anything else with a ValueError, so a bad packet costs
that packet.  No I/O here.
"""

from __future__ import annotations

from typing import Any

import msgpack

VERSION = 1
MESSAGE_MAX_BYTES = 65536
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "spawn": {"id": int, "argv": list},
    "spawned": {"id": int, "pid": int},
    "error": {"id": (int, type(None)), "message": str},
    "ready": {"pid": int},
    "exited": {"pid": int, "code": int},
}


def encode(op: str, **fields: Any) -> bytes:
    return msgpack.packb({"v": VERSION, "op": op, **fields}, use_bin_type=True)


def decode(raw: bytes) -> dict[str, Any]:
    """A validated message; ValueError names what is wrong."""
    if len(raw) > MESSAGE_MAX_BYTES:
        raise ValueError(f"message of {len(raw)} bytes is too long")
    try:
        message = msgpack.unpackb(raw, raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise ValueError(f"not msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError("not a map")
    if message.get("v") != VERSION:
        raise ValueError(f"version {message.get('v')!r} is not {VERSION}")
    fields = _FIELDS.get(message.get("op"))  # type: ignore[arg-type]
    if fields is None:
        raise ValueError(f"unknown op {message.get('op')!r}")
    for name, kind in fields.items():
        value = message.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{message['op']}: field {name!r} is missing or not {kind}")
    if message["op"] == "spawn" and not all(isinstance(arg, str) for arg in message["argv"]):
        raise ValueError("spawn: argv holds a non-string")
    return message
