"""The zygote protocol: messages round-trip; anything else is refused with a reason."""

import msgpack
import pytest

from portier import spawning


def test_messages_round_trip():
    for op, fields in [
        ("spawn", {"id": 1, "argv": ["--interface", "vm1"]}),
        ("spawned", {"id": 1, "pid": 42}),
        ("error", {"id": None, "message": "no"}),
        ("ready", {"pid": 7}),
        ("exited", {"pid": 42, "code": -9}),
    ]:
        message = spawning.decode(spawning.encode(op, **fields))
        assert message == {"v": spawning.VERSION, "op": op, **fields}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"v": 99, "op": "ready", "pid": 1}), "version"),
        (msgpack.packb({"v": spawning.VERSION, "op": "fork", "pid": 1}), "unknown op"),
        (msgpack.packb({"v": spawning.VERSION, "op": "ready"}), "'pid'"),
        (msgpack.packb({"v": spawning.VERSION, "op": "ready", "pid": True}), "'pid'"),
        (msgpack.packb({"v": spawning.VERSION, "op": "spawn", "id": 1, "argv": [1]}), "argv"),
        (b"\x00" * (spawning.MESSAGE_MAX_BYTES + 1), "too long"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(raw, reason):
    with pytest.raises(ValueError, match=reason):
        spawning.decode(raw)
