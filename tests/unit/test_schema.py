"""The shared msgpack schema: round trips, and clear errors for anything malformed."""

import msgpack
import pytest

from portier.addresses import parse_ipv6, parse_mac
from portier.neighbors import Neighbor
from portier.schema import (
    MAX_CONTROL_BYTES,
    SchemaError,
    decode_reply,
    decode_request,
    decode_worker,
    delta_encoder,
    encode,
    neighbor_from_wire,
    neighbor_to_wire,
    reply,
    request,
)
from portier.status import Code, Status


def test_request_round_trip():
    data = decode_request(
        request("add", 7, {"interface": "tap0", "group": "lan", "upstream": True})
    )
    assert (data["op"], data["id"], data["args"]["upstream"]) == ("add", 7, True)


def test_reply_round_trip():
    data = decode_reply(reply(7, Status(Code.DOES_NOT_EXIST, "x").wrap("y"), None))
    assert data == {"v": 1, "id": 7, "ok": False, "code": 1, "message": "y: x", "result": None}


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"\xc1", Code.INVALID_ARGUMENT, "not valid msgpack"),
        (_pack({"v": 1, "op": "bind"})[:-3], Code.INVALID_ARGUMENT, "not valid msgpack"),
        (_pack([1, 2]), Code.INVALID_ARGUMENT, "must be a map"),
        (_pack({"v": 2, "op": "status", "id": 1}), Code.FAILED_PRECONDITION, "version"),
        (_pack({"op": "status", "id": 1}), Code.FAILED_PRECONDITION, "version"),
        (_pack({"v": 1, "op": "frobnicate", "id": 1}), Code.INVALID_ARGUMENT, "unknown operation"),
        (_pack({"v": 1, "op": "bind", "id": 1, "args": {}}), Code.INVALID_ARGUMENT, "missing"),
        (
            _pack({"v": 1, "op": "bind", "id": 1, "args": {"interface": 5}}),
            Code.INVALID_ARGUMENT,
            "must be str",
        ),
        (
            _pack({"v": 1, "op": "nested", "id": 1, "args": {"enabled": 1}}),
            Code.INVALID_ARGUMENT,
            "must be bool",
        ),
        (
            _pack({"v": 1, "op": "status", "id": 1, "args": {"x": 1}}),
            Code.INVALID_ARGUMENT,
            "unknown field",
        ),
        (_pack({"v": 1, "op": "status", "id": [1]}), Code.INVALID_ARGUMENT, "id"),
        (
            _pack({"v": 1, "op": "status", "id": 1, "args": "x" * (MAX_CONTROL_BYTES)}),
            Code.INVALID_ARGUMENT,
            "exceeds",
        ),
        (_pack({1: 2}), Code.INVALID_ARGUMENT, "msgpack"),
    ],
)
def test_bad_requests_give_clear_errors(raw, code, words):
    with pytest.raises(SchemaError) as err:
        decode_request(raw)
    assert err.value.status.code == code
    assert words in err.value.status.message


def test_bool_is_not_a_number():
    with pytest.raises(SchemaError):
        decode_worker(encode({"kind": "loop", "interface": "a", "group": "g", "until": True}))


def test_worker_messages_and_neighbors():
    neighbor = Neighbor(
        "lan",
        parse_ipv6("2001:db8::1"),
        "vm1",
        parse_mac("52:54:00:00:00:01"),
        True,
        1.0,
        2.0,
        3.0,
        2.0,
    )
    raw = encode({"kind": "learned", "neighbors": [neighbor_to_wire(neighbor)]})
    data = decode_worker(raw)
    assert neighbor_from_wire(data["neighbors"][0]) == neighbor


@pytest.mark.parametrize(
    "message",
    [
        {"kind": "nope"},
        {"kind": 5},
        {"kind": "learned", "neighbors": [{"group": "lan"}]},
        {
            "kind": "learned",
            "neighbors": [
                {
                    "group": "lan",
                    "address": b"\x7f\x00\x00\x01",
                    "interface": "eth0",
                    "mac": bytes(6),
                    "is_router": False,
                    "first_seen": 0,
                    "last_seen": 0,
                    "reachable_until": 0,
                }
            ],
        },
        {"kind": "learned", "neighbors": ["x"]},
        {"kind": "snapshot", "seq": "1", "state": {}},
        {"kind": "hello", "interface": "eth0"},
    ],
)
def test_bad_worker_messages(message):
    with pytest.raises(SchemaError) as err:
        decode_worker(encode(message))
    assert err.value.status.code == Code.INVALID_ARGUMENT


def test_never_raises_anything_else_on_garbage():
    for raw in (b"", b"\x00", b"\xdf\xff\xff\xff\xff", b"\x91" * 5000, bytes(range(256)), 12):
        for decode in (decode_request, decode_reply, decode_worker):
            with pytest.raises(SchemaError):
                decode(raw)


def _link(**changes):
    report = {
        "kind": "link",
        "interface": "vm1",
        "ifindex": 3,
        "mac": bytes(6),
        "mtu": 1500,
        "addresses": [bytes(16)],
        "up": True,
    }
    report.update(changes)
    return report


HUGE = 1 << 62  # bytes(HUGE) would try to allocate that many bytes


@pytest.mark.parametrize("kind", ["hello", "link"])
@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"addresses": [HUGE]}, "addresses"),
        ({"addresses": ["fe80::1"]}, "addresses"),
        ({"addresses": [bytes(4)]}, "addresses"),
        ({"addresses": [bytes(16)] * 5000}, "addresses"),
        ({"mac": bytes(7)}, "mac"),
        ({"ifindex": -1}, "ifindex"),
        ({"mtu": HUGE}, "mtu"),
    ],
)
def test_link_facts_are_checked_before_anyone_uses_them(kind, changes, words):
    message = _link(**changes)
    message["kind"] = kind
    if kind == "hello":
        message["pid"] = 42
    with pytest.raises(SchemaError) as err:
        decode_worker(encode(message))
    assert err.value.status.code == Code.INVALID_ARGUMENT
    assert words in err.value.status.message


def test_an_absent_interface_reports_no_mac_and_no_addresses():
    data = decode_worker(encode(_link(ifindex=0, mac=b"", mtu=0, addresses=[], up=False)))
    assert data["ifindex"] == 0


@pytest.mark.parametrize(
    "message",
    [
        {"kind": "prefix", "group": "lan", "prefix": bytes(4), "length": 64, "valid_until": 1.0},
        {"kind": "prefix", "group": "lan", "prefix": bytes(16), "length": 129, "valid_until": 1},
        {"kind": "prefix", "group": "lan", "prefix": bytes(16), "length": 64, "valid_until": -1},
        {"kind": "loop", "interface": "vm1", "group": "lan", "until": float("nan")},
        {"kind": "learned", "neighbors": [None] * 100_000},
        {
            "kind": "hello",
            "interface": "vm1",
            "pid": 0,
            **{k: v for k, v in _link().items() if k not in ("kind", "interface")},
        },
    ],
)
def test_worker_reports_with_impossible_values_are_refused(message):
    with pytest.raises(SchemaError):
        decode_worker(encode(message))


def test_the_supervisor_state_checks_link_reports_itself():
    """A report that did not come through decode_worker still never reaches bytes()."""
    from portier.config import Config
    from portier.supervisor.state import ProxyState

    state = ProxyState(Config())
    state.topology.bind("vm1")
    with pytest.raises(SchemaError):
        state.on_link("vm1", _link(addresses=[HUGE]))
    with pytest.raises(SchemaError):
        state.on_link("vm1", _link(mac=HUGE))
    assert state.topology.interfaces["vm1"].addresses == frozenset()


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 65536, 2**40])
def test_a_delta_packed_once_is_the_delta_encoded_whole(seq):
    changes = [["neighbor", "lan", b"\x20\x01" + bytes(14), "vm1", 1.5], ["release", "vm9"]]
    whole = encode({"kind": "delta", "seq": seq, "changes": changes})
    assert delta_encoder(changes)(seq) == whole
    assert decode_worker(whole)["seq"] == seq
