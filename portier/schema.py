"""The versioned msgpack message schema shared by every Portier process.

Every message is a msgpack map with `v` (the schema version) and either `op` (a control
request), `ok` (a control reply) or `kind` (worker channel: hello, learned, snapshot,
delta, ...).  The field tables below are the whole contract.  `decode` accepts untrusted
bytes and either returns a checked dict or raises `SchemaError`, whose Status says what
was wrong; no other exception leaves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from portier.neighbors import Neighbor
from portier.status import Code, Status

SCHEMA_VERSION = 1
# Upper bounds (seconds) of the workers' ND relay-latency histogram; +Inf follows.
ND_RELAY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
MAX_CONTROL_BYTES = 64 * 1024
MAX_WORKER_BYTES = 16 * 1024 * 1024
# Bounds on what a worker reports: far above anything real, low enough that a bad value
# can never make the supervisor allocate or loop without end.
MAX_LINK_ADDRESSES = 1024
MAX_LEARNED_BATCH = 4096
MAX_INT32 = (1 << 31) - 1


class SchemaError(Exception):
    def __init__(self, status: Status) -> None:
        super().__init__(str(status))
        self.status = status


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    types: tuple[type, ...]
    required: bool = True


def _f(name: str, *types: type, required: bool = True) -> Field:
    return Field(name, types, required)


_NUMBER = (int, float)

# Control requests: op -> fields of `args`.
CONTROL_OPS: dict[str, tuple[Field, ...]] = {
    "status": (),
    "groups": (),
    "interfaces": (),
    "neighbors": (_f("group", str, required=False),),
    "workers": (),
    "bind": (_f("interface", str),),
    "release": (_f("interface", str),),
    "group_create": (_f("group", str),),
    "group_release": (_f("group", str),),
    "add": (_f("interface", str), _f("group", str), _f("upstream", bool, required=False)),
    "remove": (_f("interface", str),),
    "upstream_set": (_f("interface", str),),
    "upstream_unset": (_f("group", str),),
    "enable": (_f("interface", str),),
    "flush": (_f("group", str, required=False),),
    "nested": (_f("enabled", bool),),
    "reload": (),
    "fastpath": (_f("check", bool, required=False),),
}

_NEIGHBOR = (
    _f("group", str),
    _f("address", bytes),
    _f("interface", str),
    _f("mac", bytes),
    _f("is_router", bool),
    _f("first_seen", *_NUMBER),
    _f("last_seen", *_NUMBER),
    _f("reachable_until", *_NUMBER),
    _f("claimant", str, required=False),
    _f("claimant_mac", bytes, required=False),
    _f("check_until", *_NUMBER, required=False),
)

_LINK_FIELDS = (
    _f("ifindex", int),
    _f("mac", bytes),
    _f("mtu", int),
    _f("addresses", list),
    _f("up", bool),
)

# Worker channel: kind -> fields of the message itself (values checked further below).
WORKER_KINDS: dict[str, tuple[Field, ...]] = {
    # worker -> supervisor
    "hello": (_f("interface", str), _f("pid", int), *_LINK_FIELDS),
    "learned": (_f("neighbors", list),),
    "claim": (_f("group", str), _f("address", bytes), _f("mac", bytes)),
    "loop": (_f("interface", str), _f("group", str), _f("until", *_NUMBER)),
    "prefix": (
        _f("group", str),
        _f("prefix", bytes),
        _f("length", int),
        _f("valid_until", *_NUMBER),
    ),
    "link": (_f("interface", str), *_LINK_FIELDS),
    "heartbeat": (
        _f("counters", dict, required=False),
        _f("drops", dict, required=False),
        _f("histograms", dict, required=False),
        _f("seq", int, required=False),
        _f("next_s", *_NUMBER, required=False),
    ),
    "resync": (_f("seq", int, required=False),),
    # supervisor -> worker
    "snapshot": (_f("seq", int), _f("state", dict)),
    "delta": (_f("seq", int), _f("changes", list)),
    "command": (_f("command", str), _f("args", dict, required=False)),
}

_CONTROL_REQUEST = (_f("op", str), _f("id", int, str), _f("args", dict, required=False))
_CONTROL_REPLY = (
    _f("id", int, str, type(None)),
    _f("ok", bool),
    _f("code", int),
    _f("message", str),
    _f("result", object, required=False),
)


def _invalid(message: str) -> SchemaError:
    return SchemaError(Status(Code.INVALID_ARGUMENT, message))


def _check(fields: tuple[Field, ...], data: dict, where: str) -> None:
    for spec in fields:
        if spec.name not in data:
            if spec.required:
                raise _invalid(f"{where}: missing field '{spec.name}'")
            continue
        value = data[spec.name]
        if spec.types == (object,):
            continue
        # bool is an int subclass; a bool is not accepted where a number is wanted.
        if isinstance(value, bool) and bool not in spec.types:
            raise _invalid(f"{where}: field '{spec.name}' must be {_names(spec.types)}")
        if not isinstance(value, spec.types):
            raise _invalid(
                f"{where}: field '{spec.name}' must be {_names(spec.types)}, "
                f"not {type(value).__name__}"
            )


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("nil" if t is type(None) else t.__name__ for t in types)


def encode(message: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": SCHEMA_VERSION, **message}, use_bin_type=True)


def delta_encoder(changes: list[Any]) -> Callable[[int], bytes]:
    """seq -> `encode({"kind": "delta", "seq": seq, "changes": changes})`, the changes
    packed once: a broadcast sends the same changes to every worker, only seq differs."""

    def pack(value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    head = b"\x84" + pack("v") + pack(SCHEMA_VERSION) + pack("kind") + pack("delta") + pack("seq")
    tail = pack("changes") + pack(changes)
    return lambda seq: head + pack(seq) + tail


def unpack(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Bytes -> a map carrying our schema version; SchemaError otherwise."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _invalid("message is not bytes")
    if len(raw) > max_bytes:
        raise SchemaError(
            Status(Code.INVALID_ARGUMENT, f"message of {len(raw)} bytes exceeds {max_bytes}")
        )
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _invalid(f"message is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise _invalid("message must be a map")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise SchemaError(
            Status(
                Code.FAILED_PRECONDITION,
                f"schema version {version!r} is not supported (this side speaks {SCHEMA_VERSION})",
            )
        )
    return data


def decode_request(raw: bytes) -> dict[str, Any]:
    """A control request: {v, op, id, args}."""
    data = unpack(raw, MAX_CONTROL_BYTES)
    _check(_CONTROL_REQUEST, data, "request")
    op = data["op"]
    fields = CONTROL_OPS.get(op)
    if fields is None:
        raise SchemaError(Status(Code.INVALID_ARGUMENT, f"unknown operation {op!r}"))
    args = data.setdefault("args", {})
    _check(fields, args, f"{op} arguments")
    unknown = set(args) - {spec.name for spec in fields}
    if unknown:
        raise _invalid(f"{op} arguments: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return data


def decode_reply(raw: bytes) -> dict[str, Any]:
    data = unpack(raw, MAX_WORKER_BYTES)
    _check(_CONTROL_REPLY, data, "reply")
    return data


def decode_worker(raw: bytes) -> dict[str, Any]:
    """A worker-channel message: {v, kind, ...}."""
    data = unpack(raw, MAX_WORKER_BYTES)
    kind = data.get("kind")
    fields = WORKER_KINDS.get(kind) if isinstance(kind, str) else None
    if fields is None or not isinstance(kind, str):
        raise _invalid(f"unknown message kind {kind!r}")
    _check(fields, data, kind)
    check_values = _VALUE_CHECKS.get(kind)
    if check_values is not None:
        check_values(data)
    return data


@dataclass(frozen=True, slots=True)
class LinkFacts:
    """What a worker says of its interface (hello, link), checked."""

    ifindex: int  # 0: the interface does not exist
    mac: bytes
    mtu: int
    addresses: tuple[bytes, ...]
    up: bool


def link_facts(report: object) -> LinkFacts:
    """The checked link facts of a hello or link report; SchemaError when malformed."""
    if not isinstance(report, dict):
        raise _invalid("link report must be a map")
    _check(_LINK_FIELDS, report, "link")
    ifindex, mac, mtu, addresses = (report[k] for k in ("ifindex", "mac", "mtu", "addresses"))
    if not 0 <= ifindex <= MAX_INT32:
        raise _invalid(f"link: ifindex {ifindex} out of range")
    if not 0 <= mtu <= MAX_INT32:
        raise _invalid(f"link: mtu {mtu} out of range")
    if len(mac) not in (0, 6):
        raise _invalid(f"link: mac must be 6 bytes (or empty), not {len(mac)}")
    if len(addresses) > MAX_LINK_ADDRESSES:
        raise _invalid(f"link: {len(addresses)} addresses, at most {MAX_LINK_ADDRESSES}")
    if not all(isinstance(a, bytes) and len(a) == 16 for a in addresses):
        raise _invalid("link: addresses must be 16-byte strings")
    return LinkFacts(ifindex, mac, mtu, tuple(addresses), report["up"])


def _check_hello(data: dict[str, Any]) -> None:
    if not 0 < data["pid"] <= MAX_INT32:
        raise _invalid(f"hello: pid {data['pid']} out of range")
    link_facts(data)


def _check_learned(data: dict[str, Any]) -> None:
    items = data["neighbors"]
    if len(items) > MAX_LEARNED_BATCH:
        raise _invalid(f"learned: {len(items)} neighbors, at most {MAX_LEARNED_BATCH}")
    for item in items:
        check_neighbor(item)


def _check_prefix(data: dict[str, Any]) -> None:
    if len(data["prefix"]) != 16 or not 0 <= data["length"] <= 128:
        raise _invalid("prefix: prefix must be 16 bytes and length 0..128")
    valid_until = data["valid_until"]
    if math.isnan(valid_until) or valid_until < 0:  # inf: an infinite lifetime
        raise _invalid(f"prefix: valid_until {valid_until!r}")


def _check_loop(data: dict[str, Any]) -> None:
    if not math.isfinite(data["until"]):
        raise _invalid(f"loop: until {data['until']!r}")


_VALUE_CHECKS = {
    "hello": _check_hello,
    "link": link_facts,
    "learned": _check_learned,
    "prefix": _check_prefix,
    "loop": _check_loop,
}


def request(op: str, request_id: int | str, args: dict[str, Any] | None = None) -> bytes:
    return encode({"op": op, "id": request_id, "args": args or {}})


def reply(request_id: Any, status: Status, result: Any = None) -> bytes:
    return encode(
        {
            "id": request_id,
            "ok": status.ok,
            "code": int(status.code),
            "message": status.text(),
            "result": result,
        }
    )


def check_neighbor(item: object) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _invalid("neighbor must be a map")
    _check(_NEIGHBOR, item, "neighbor")
    if len(item["address"]) != 16 or len(item["mac"]) != 6:
        raise _invalid("neighbor: address must be 16 bytes and mac 6 bytes")
    if any(math.isnan(item[name]) for name in ("first_seen", "last_seen", "reachable_until")):
        raise _invalid("neighbor: a time is not a number")
    if math.isnan(item.get("check_until", 0.0)) or len(item.get("claimant_mac", b"")) not in (0, 6):
        raise _invalid("neighbor: bad owner check")
    return item


def neighbor_to_wire(neighbor: Neighbor) -> dict[str, Any]:
    return {
        "group": neighbor.group,
        "address": neighbor.address,
        "interface": neighbor.interface,
        "mac": neighbor.mac,
        "is_router": neighbor.is_router,
        "first_seen": neighbor.first_seen,
        "last_seen": neighbor.last_seen,
        "reachable_until": neighbor.reachable_until,
        "claimant": neighbor.claimant,
        "claimant_mac": neighbor.claimant_mac,
        "check_until": neighbor.check_until,
    }


def neighbor_from_wire(item: object) -> Neighbor:
    data = check_neighbor(item)
    return Neighbor(
        group=data["group"],
        address=bytes(data["address"]),
        interface=data["interface"],
        mac=bytes(data["mac"]),
        is_router=data["is_router"],
        first_seen=float(data["first_seen"]),
        last_seen=float(data["last_seen"]),
        reachable_until=float(data["reachable_until"]),
        reported_at=float(data["last_seen"]),
        claimant=data.get("claimant", ""),
        claimant_mac=bytes(data.get("claimant_mac", b"")),
        check_until=float(data.get("check_until", 0.0)),
    )
