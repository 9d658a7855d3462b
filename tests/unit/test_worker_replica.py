"""The worker's replica protocol: snapshot, in-order deltas, a resync on a gap or on
anything it cannot apply, the answer table it publishes, and a silent supervisor."""

import time

import pytest

from portier import schema
from portier.addresses import parse_ipv6, parse_mac
from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.replication import (
    change_flush,
    change_neighbor,
    change_neighbor_removed,
    change_topology,
    coalesce,
    delta_message,
    heartbeat_message,
    snapshot_message,
    snapshot_to_wire,
    topology_from_wire,
    topology_to_wire,
)
from portier.schema import SchemaError
from portier.workers.main import Worker


@pytest.fixture
def worker():
    worker = Worker("lo", "ipc:///nonexistent/portier-test.sock", capacity=100, lifetime_s=60)
    worker.sent = []
    worker.send = lambda kind, **fields: worker.sent.append((kind, fields))
    yield worker
    worker.close()


def authoritative() -> tuple[Topology, NeighborCache]:
    topology = Topology()
    topology.bind("lo")
    topology.bind("eth1")
    topology.create_group("lan")
    topology.add_to_group("lo", "lan", upstream=True)
    topology.add_to_group("eth1", "lan")
    neighbors = NeighborCache()
    neighbors.learn("lan", parse_ipv6("2001:db8::1"), "eth1", parse_mac("52:54:00:00:00:01"), 1.0)
    return topology, neighbors


def test_snapshot_then_deltas_then_gap(worker):
    topology, neighbors = authoritative()
    worker.on_message(
        schema.encode(
            {"kind": "snapshot", "seq": 0, "state": snapshot_to_wire(topology, neighbors)}
        )
    )
    assert worker.seq == 0
    assert worker.neighbors.get("lan", parse_ipv6("2001:db8::1")).interface == "eth1"
    assert worker.topology.groups["lan"].upstream == "lo"
    entry = Neighbor("lan", parse_ipv6("2001:db8::2"), "eth1", parse_mac("52:54:00:00:00:02"))
    worker.on_message(
        schema.encode({"kind": "delta", "seq": 1, "changes": [change_neighbor(entry)]})
    )
    assert worker.seq == 1 and worker.neighbors.get("lan", entry.address) is not None
    topology.unset_upstream("lan")
    worker.on_message(
        schema.encode({"kind": "delta", "seq": 3, "changes": [change_topology(topology)]})
    )
    assert worker.sent == [("resync", {"seq": 1})]
    assert worker.seq is None  # stops forwarding on a stale replica until the snapshot
    assert worker.topology.groups["lan"].upstream == "lo"  # the out-of-order delta was not applied


def test_malformed_messages_are_counted_not_fatal(worker):
    worker.on_message(b"\xc1garbage")
    worker.on_message(schema.encode({"kind": "snapshot", "seq": 0, "state": {"neighbors": "x"}}))
    assert worker.counters["channel_bad_messages"] == 2
    worker.on_message(
        schema.encode(
            {"kind": "snapshot", "seq": 0, "state": {"neighbors": [], "topology": {"nope": 1}}}
        )
    )
    assert worker.sent[-1] == ("resync", {"seq": -1})
    assert worker.seq is None


def snapshot(topology, neighbors, seq=0) -> bytes:
    return schema.encode(snapshot_message(seq, topology, neighbors))


def delta(seq, *changes) -> bytes:
    return schema.encode(delta_message(seq, list(changes)))


def test_an_unknown_op_is_an_error_that_resyncs_and_is_counted(worker):
    topology, neighbors = authoritative()
    worker.on_message(snapshot(topology, neighbors))
    entry = Neighbor("lan", parse_ipv6("2001:db8::2"), "eth1", parse_mac("52:54:00:00:00:02"))
    worker.on_message(delta(1, change_neighbor(entry), {"op": "teleport", "where": "moon"}))
    assert worker.counters["channel_unknown_ops"] == 1
    assert worker.sent[-1] == ("resync", {"seq": -1})
    assert worker.seq is None
    # Every change is checked before any is applied: the good one did not slip in.
    assert worker.neighbors.get("lan", entry.address) is None


def test_every_op_applies_through_the_replication_module(worker):
    topology, neighbors = authoritative()
    worker.on_message(snapshot(topology, neighbors))
    entry = Neighbor("lan", parse_ipv6("2001:db8::2"), "eth1", parse_mac("52:54:00:00:00:02"))
    worker.on_message(delta(1, change_neighbor(entry)))
    worker.on_message(delta(2, change_neighbor_removed("lan", parse_ipv6("2001:db8::1"))))
    assert worker.neighbors.get("lan", parse_ipv6("2001:db8::1")) is None
    worker.on_message(delta(3, change_flush("lan")))
    assert len(worker.neighbors) == 0
    topology.unset_upstream("lan")
    worker.on_message(delta(4, change_topology(topology)))
    assert worker.topology.groups["lan"].upstream is None
    assert worker.seq == 4 and not worker.sent


@pytest.mark.parametrize(
    "change",
    [
        {"op": "neighbor_removed", "group": "lan", "address": 7},
        {"op": "neighbor_removed", "group": "lan", "address": bytes(4)},
        {"op": "flush", "group": 5},
        {"op": "neighbor", "neighbor": {"group": "lan"}},
        {"op": "topology", "topology": {"interfaces": [], "groups": [{"name": "lan"}]}},
        "flush",
    ],
)
def test_a_malformed_change_resyncs(worker, change):
    topology, neighbors = authoritative()
    worker.on_message(snapshot(topology, neighbors))
    worker.on_message(delta(1, change))
    assert worker.sent[-1] == ("resync", {"seq": -1}) and worker.seq is None
    assert worker.counters["channel_bad_messages"] == 1


def test_a_topology_whose_members_are_not_bound_is_refused():
    topology, _ = authoritative()
    wire = topology_to_wire(topology)
    wire["interfaces"] = [i for i in wire["interfaces"] if i["name"] != "eth1"]
    with pytest.raises(SchemaError):
        topology_from_wire(wire)
    wire = topology_to_wire(topology)
    wire["interfaces"][0]["mac"] = 1 << 62  # never handed to bytes()
    with pytest.raises(SchemaError):
        topology_from_wire(wire)


def test_the_answer_thread_gets_a_table_only_while_the_replica_is_current(worker):
    topology, neighbors = authoritative()
    topology.update_link("lo", ifindex=1, mac=parse_mac("02:00:00:00:00:01"))
    topology.update_link("eth1", ifindex=2, mac=parse_mac("02:00:00:00:00:02"))
    assert worker.early.table is None and worker.answerer.held  # before any snapshot
    worker.on_message(snapshot(topology, neighbors))
    worker.publish_answers()  # what the loop does after each turn
    table = worker.early.table
    assert table is not None and not worker.answerer.held
    assert set(table.targets) == {parse_ipv6("2001:db8::1")}
    entry = Neighbor("lan", parse_ipv6("2001:db8::2"), "eth1", parse_mac("52:54:00:00:00:02"))
    worker.on_message(delta(1, change_neighbor(entry)))
    worker.publish_answers()
    assert set(worker.early.table.targets) == {parse_ipv6("2001:db8::1"), entry.address}
    assert set(table.targets) == {parse_ipv6("2001:db8::1")}  # the old one never changed
    worker.on_message(delta(5, change_flush(None)))  # a gap: stale at once
    assert worker.early.table is None and worker.answerer.held
    worker.publish_answers()
    assert worker.early.table is None  # and nothing is published until the snapshot
    worker.on_message(snapshot(topology, neighbors))
    worker.publish_answers()
    assert worker.early.table is not None and not worker.answerer.held


def test_a_silent_supervisor_is_outlived_and_asked_for_a_snapshot(worker):
    topology, neighbors = authoritative()
    worker.on_message(snapshot(topology, neighbors))
    now = time.monotonic()
    worker.heartbeat(now)  # and no answer to it
    worker.sent.clear()
    worker.check_supervisor(now + worker.silence_s + 5)
    assert worker.supervisor_silent and worker.counters["supervisor_silences"] == 1
    assert worker.seq == 0  # the replica is kept: forwarding goes on with it
    worker.on_message(schema.encode(heartbeat_message()))
    assert worker.sent == [("resync", {"seq": 0})]
    assert not worker.supervisor_silent
    worker.on_message(schema.encode(heartbeat_message()))
    assert len(worker.sent) == 1  # once per silence


def test_coalesced_topology_ops_leave_a_replica_as_all_of_them_in_order():
    first, last = Topology(), Topology()
    first.bind("vm1")
    last.bind("vm1")
    last.bind("vm2")
    changes = [
        change_topology(first),
        change_flush("lan"),
        change_topology(last),
        change_flush(None),
    ]
    merged = coalesce(changes)
    assert [c["op"] for c in merged] == ["topology", "flush", "flush"]
    assert merged[0] is changes[2] and merged[1:] == [changes[1], changes[3]]
    assert coalesce(changes[:2]) == changes[:2]


def test_the_kernel_answers_flag_travels_with_the_topology():
    topology = Topology()
    topology.kernel_answers = True
    assert topology_from_wire(topology_to_wire(topology)).kernel_answers is True
    older = topology_to_wire(Topology())
    del older["kernel_answers"]  # from a supervisor that predates it
    assert topology_from_wire(older).kernel_answers is False
    with pytest.raises(SchemaError):
        topology_from_wire({**older, "kernel_answers": "yes"})


def test_idle_heartbeats_back_off_and_leave_unchanged_counters_out(worker):
    """Hundreds of idle workers must cost next to nothing: an unchanged beat is small,
    and each one promises the next later, up to HEARTBEAT_IDLE_MAX_S; a change brings
    the whole beat and the one-second pace back."""
    from portier.workers.main import HEARTBEAT_IDLE_MAX_S, HEARTBEAT_IDLE_S, HEARTBEAT_S

    now = time.monotonic()
    intervals = []
    for _ in range(8):
        intervals.append(worker.heartbeat(now))
        worker.on_message(schema.encode(heartbeat_message()))  # the supervisor answers
    assert intervals[0] == HEARTBEAT_S  # the first beat is news
    assert intervals[1:5] == [HEARTBEAT_IDLE_S, 4.0, 8.0, 16.0]
    assert intervals[-1] == HEARTBEAT_IDLE_MAX_S
    beats = [fields for kind, fields in worker.sent if kind == "heartbeat"]
    assert "counters" in beats[0] and all("counters" not in b for b in beats[1:])
    assert [b["next_s"] for b in beats] == intervals  # each says when the next comes
    worker.counters["something_new"] += 1
    assert worker.heartbeat(now) == HEARTBEAT_S
    assert worker.sent[-1][1]["counters"]["something_new"] == 1


def test_a_long_idle_interval_is_not_a_silent_supervisor(worker):
    """Silence is a beat left unanswered, not time since the last word: an idle worker
    hears nothing for 30 s between its beats, and that is no silence."""
    now = time.monotonic()
    worker.heartbeat(now)
    worker.on_message(schema.encode(heartbeat_message()))
    worker.check_supervisor(now + worker.silence_s * 3)  # long after the last word
    assert not worker.supervisor_silent
    worker.heartbeat(now + worker.silence_s * 3)
    worker.check_supervisor(now + worker.silence_s * 3.5)  # unanswered, within silence_s
    assert not worker.supervisor_silent
    worker.check_supervisor(now + worker.silence_s * 4 + 1)
    assert worker.supervisor_silent


def test_a_long_turn_of_frames_still_beats(worker, monkeypatch):
    """A worker flooding NS out of hundreds of members can spend seconds in one turn; it
    must beat within it, or the supervisor kills it as hung (up0 was, at 512 guests)."""
    import socket

    from portier.workers import packetio

    wire, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        inside.setblocking(False)
        for _ in range(4):
            wire.send(bytes(packetio.VNET_HDR_LEN) + bytes(60))
        monkeypatch.setattr(worker, "receive", lambda *args: time.sleep(0.4))  # slow work
        worker.next_beat = time.monotonic() + 1.0
        assert worker.drain(inside, False, 256) == 4
        beats = [fields for kind, fields in worker.sent if kind == "heartbeat"]
        assert len(beats) == 1, "no heartbeat within a 1.6 s turn"
    finally:
        wire.close()
        inside.close()
