"""The control server's request handling: whatever bytes arrive, a reply with a code."""

import asyncio
import random

import msgpack
import pytest

from portier import schema
from portier.status import Code, Status
from portier.supervisor.control import ControlServer


async def _dispatch(op, args):
    return Status(Code.OK), {"op": op}, None


def _malformed(rng: random.Random) -> bytes:
    """One of the shapes a confused or hostile client sends."""
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1:  # msgpack, but not a map
        return msgpack.packb(rng.choice([1, "x", [1, 2], None, 3.5, b"\x00", True]))
    if kind == 2:  # wrong types in the fields
        value = rng.choice([None, 1, "s", b"b", [], {}, 2.5, True, -(2**63)])
        return msgpack.packb({"v": 1, "op": value, "id": value, "args": value})
    if kind == 3:  # unknown operation
        return schema.request(rng.choice(["", "nope", "x" * 1000, "status "]), rng.randrange(9))
    if kind == 4:  # wrong version
        return msgpack.packb(
            {"v": rng.choice([0, 2, "1", None, 1.0 + 1e-9]), "op": "status", "id": 1}
        )
    if kind == 5:  # deep nesting
        depth = rng.randrange(100, 5000)
        return b"\x91" * depth + b"\xc0"
    if kind == 6:  # huge: beyond the schema's limit, below the transport's
        return msgpack.packb({"v": 1, "op": "status", "id": 7, "args": {"x": "y" * 70_000}})
    if kind == 7:  # wrong arguments of a known op
        return schema.request("bind", 3, {"interface": rng.choice([1, None, b"x", ["a"]])})
    # a truncated valid request
    raw = schema.request("status", 5)
    return raw[: rng.randrange(len(raw))]


def test_ten_thousand_malformed_requests_each_get_an_error_code():
    server = ControlServer(socket=None, dispatch=_dispatch)  # type: ignore[arg-type]
    rng = random.Random(11)

    async def run():
        for _ in range(10_000):
            raw = _malformed(rng)
            reply = schema.decode_reply(await server.handle(raw))
            assert not reply["ok"], raw[:80]
            assert reply["code"] in {int(c) for c in Code} and reply["code"] != Code.OK
            assert reply["message"]

    asyncio.run(run())


@pytest.mark.parametrize("depth", [600, 10_000, 100_000])
def test_deep_structures_are_refused_with_a_code(depth):
    server = ControlServer(socket=None, dispatch=_dispatch)  # type: ignore[arg-type]
    raw = b"\x81\xa1v" + b"\x91" * depth + b"\xc0"
    reply = schema.decode_reply(asyncio.run(server.handle(raw)))
    assert reply["code"] in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION)


def test_an_id_is_echoed_when_one_can_be_read():
    server = ControlServer(socket=None, dispatch=_dispatch)  # type: ignore[arg-type]
    raw = msgpack.packb({"v": 9, "op": "status", "id": 42})
    reply = schema.decode_reply(asyncio.run(server.handle(raw)))
    assert reply["id"] == 42 and reply["code"] == Code.FAILED_PRECONDITION
