"""The worker's replica protocol: snapshot, in-order deltas, and a resync on a gap."""

import pytest

from portier import schema
from portier.addresses import parse_ipv6, parse_mac
from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.replication import change_neighbor, change_topology, snapshot_to_wire
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
