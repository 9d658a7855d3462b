"""One interface's link facts replicated alone, and coalesced with the other ops.

A hello or link report changes one interface; shipping the whole topology for it made
start-up with N guests cost N whole topologies to each of N workers.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from portier.groups import DisableReason, Topology
from portier.neighbors import NeighborCache
from portier.replication import (
    Replica,
    change_flush,
    change_interface,
    change_topology,
    coalesce,
    snapshot_to_wire,
    topology_to_wire,
)


def lan(names: list[str]) -> Topology:
    topology = Topology()
    topology.create_group("lan")
    for name in names:
        topology.bind(name)
        topology.add_to_group(name, "lan", upstream=name == "up0")
    return topology


def replica_of(topology: Topology) -> Replica:
    replica = Replica(Topology(), NeighborCache())
    outcome = replica.apply(
        {"kind": "snapshot", "seq": 0, "state": snapshot_to_wire(topology, NeighborCache())}
    )
    assert outcome.applied
    return replica


def delta(replica: Replica, changes: list) -> None:
    assert replica.seq is not None
    outcome = replica.apply({"kind": "delta", "seq": replica.seq + 1, "changes": changes})
    assert not outcome.resync, outcome.error


def test_a_link_report_ships_its_interface_alone():
    topology = lan(["up0", "vm1", "vm2"])
    replica = replica_of(topology)
    topology.update_link("vm1", ifindex=7, mac=b"\x02" * 6, mtu=1400, addresses=[bytes(16)])
    topology.set_reason("vm1", DisableReason.LINK_DOWN, True)
    change = change_interface(topology.interfaces["vm1"])
    assert change["interface"]["name"] == "vm1" and "groups" not in change
    delta(replica, [change])
    assert topology_to_wire(replica.topology) == topology_to_wire(topology)
    assert replica.topology.own_macs() == {b"\x02" * 6}  # derived data follows
    assert not replica.topology.interfaces["vm1"].enabled


def test_an_interface_op_out_of_step_with_the_replica_resyncs_and_changes_nothing():
    topology = lan(["up0", "vm1"])
    replica = replica_of(topology)
    before = topology_to_wire(replica.topology)
    stranger = lan(["up0", "vm1", "vm9"])
    stranger.update_link("vm9", ifindex=9)
    moved = Topology()
    moved.bind("vm1")  # bound, but in no group: not what the replica holds
    moved.update_link("vm1", mtu=1280)
    broken = change_interface(topology.interfaces["vm1"])
    broken["interface"] = {**broken["interface"], "disable_reasons": ["no-such-reason"]}
    for bad in (
        change_interface(stranger.interfaces["vm9"]),
        change_interface(moved.interfaces["vm1"]),
        broken,
        {"op": "interface", "interface": "vm1"},
    ):
        outcome = replica.apply({"kind": "delta", "seq": 1, "changes": [bad]})
        assert outcome.resync and outcome.error is not None, bad
        assert topology_to_wire(replica.topology) == before
        replica = replica_of(topology)


NAMES = ["vm1", "vm2", "vm3", "vm4"]
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["link", "link", "link", "bind", "release", "flush"]),
        st.sampled_from(NAMES),
        st.integers(1280, 9000),
        st.booleans(),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_coalesced_changes_leave_a_replica_as_all_of_them_one_by_one(actions):
    """Whatever mix of link reports, whole-topology changes and flushes queue up for a
    worker, the one coalesced delta leaves its replica as the deltas in turn would, and
    both equal the supervisor's topology."""
    topology = lan(["up0", "vm1", "vm2"])
    one_by_one, coalesced = replica_of(topology), replica_of(topology)
    changes = []
    for action, name, mtu, down in actions:
        if action == "link" and name in topology.interfaces:
            topology.update_link(name, ifindex=NAMES.index(name) + 10, mtu=mtu)
            topology.set_reason(name, DisableReason.LINK_DOWN, down)
            change = change_interface(topology.interfaces[name])
        elif action == "bind" and name not in topology.interfaces:
            topology.bind(name)
            topology.add_to_group(name, "lan")
            change = change_topology(topology)
        elif action == "release" and name in topology.interfaces:
            topology.release(name)
            change = change_topology(topology)
        elif action == "flush":
            change = change_flush(None)
        else:
            continue
        changes.append(change)
        delta(one_by_one, [change])
    merged = coalesce(changes)
    assert sum(c["op"] == "topology" for c in merged) <= 1
    names = [c["interface"]["name"] for c in merged if c["op"] == "interface"]
    assert len(names) == len(set(names))
    delta(coalesced, merged)
    wanted = topology_to_wire(topology)
    assert topology_to_wire(one_by_one.topology) == wanted
    assert topology_to_wire(coalesced.topology) == wanted
