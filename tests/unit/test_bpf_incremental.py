"""The BPF path's incremental sync: after any sequence of changes to the cache and the
topology, what it programmed neighbor by neighbor (from the cache's journal) is exactly
what a whole recompute wants.  Maps are dictionaries here: the packing and the kernel
side are tests/bpf's."""

from __future__ import annotations

from contextlib import ExitStack
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.ownership import OwnerChecks
from portier.supervisor import bpfpath
from portier.supervisor.bpfpath import BpfPath, GroupNumbers, wanted

MEMBERS = {"up0": 11, "vm1": 12, "vm2": 13, "vm3": 14, "lan2up": 21, "ct1": 22}
GROUPS = {"lan": ("up0", "vm1", "vm2", "vm3"), "lab": ("lan2up", "ct1")}
ADDRESSES = [bytes.fromhex("20010db8000100000000000000000000")[:15] + bytes([n]) for n in range(6)]
MACS = [bytes([2, 0, 0, 0, 0, n]) for n in range(1, 5)]


class DictMap:
    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}

    def update(self, key: bytes, value: bytes) -> None:
        self.entries[key] = value

    def delete(self, key: bytes) -> None:
        self.entries.pop(key, None)


def build() -> tuple[Topology, NeighborCache]:
    topology = Topology()
    for group, members in GROUPS.items():
        topology.create_group(group)
        for name in members:
            topology.bind(name)
            topology.update_link(
                name, ifindex=MEMBERS[name], mac=bytes([6, 0, 0, 0, 0, MEMBERS[name]]), mtu=1500
            )
            topology.add_to_group(name, group, upstream=name == members[0])
        topology.groups[group].onlink_prefixes[(ADDRESSES[0][:8] + bytes(8), 64)] = 1e12
    topology.groups["lab"].ownership = False
    return topology, NeighborCache(per_member_limit=4)


member = st.sampled_from(sorted(MEMBERS))
group = st.sampled_from(sorted(GROUPS))
address = st.sampled_from(ADDRESSES)
mac = st.sampled_from(MACS)
operation = st.one_of(
    st.tuples(st.just("learn"), group, address, member, mac, st.booleans()),
    st.tuples(st.just("remove"), group, address),
    st.tuples(st.just("check"), st.integers(0, 50), st.integers(0, 3), mac),
    st.tuples(st.just("settle"), group, address),
    st.tuples(st.just("flush_interface"), member),
    st.tuples(st.just("expire")),
    st.tuples(st.just("disable"), member),
    st.tuples(st.just("enable"), member),
    st.tuples(st.just("mtu"), member, st.sampled_from([1280, 1500, 9000])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=25), st.lists(st.booleans(), min_size=25, max_size=25))
def test_incremental_sync_programs_what_a_recompute_wants(
    operations: list[tuple], sync_after: list[bool]
) -> None:
    topology, neighbors = build()
    checks = OwnerChecks(topology, neighbors, probe_s=1.0)
    path = BpfPath()
    path.maps = {name: DictMap() for name in bpfpath.MAP_SIZES}  # type: ignore[misc]
    path.program = mock.Mock(prog_fd=3)
    now = 100.0
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(bpfpath.tchook, "attach", return_value=7))
        stack.enter_context(mock.patch.object(bpfpath.tchook, "detach", return_value=True))
        neighbors.keep_journal()
        path.sync(topology, neighbors, now, full=True)
        for step, (op, *args) in enumerate(operations):
            now += 7.0
            if op == "learn":
                g, a, m, hw, router = args
                if topology.interfaces[m].group == g:
                    neighbors.learn(g, a, m, hw, now, is_router=router and m in ("up0", "lan2up"))
            elif op == "remove":
                neighbors.remove(*args)
            elif op == "check":  # another member claims a known address
                entries, pick, hw = list(neighbors), args[1], args[2]
                if entries:
                    entry = entries[args[0] % len(entries)]
                    others = GROUPS[entry.group]
                    checks.claim(entry.group, entry.address, others[pick % len(others)], hw, now)
            elif op == "settle":
                entry = neighbors.get(*args)
                if entry is not None:
                    checks.owner_seen(entry)
            elif op == "flush_interface":
                neighbors.flush_interface(args[0])
            elif op == "expire":
                neighbors.expire(now - neighbors.lifetime_s + 30.0)
            elif op in ("disable", "enable"):
                topology.interfaces[args[0]].enabled = op == "enable"
            elif op == "mtu":
                topology.interfaces[args[0]].mtu = args[1]
            if sync_after[step]:
                path.sync(topology, neighbors, now)
        path.sync(topology, neighbors, now)
    want = wanted(topology, neighbors, now, GroupNumbers(path.numbers._numbers))
    assert path.programmed.maps == want.maps
    assert path.programmed.attached == want.attached
    for name, programmed in path.programmed.maps.items():
        assert path.maps[name].entries == programmed  # type: ignore[attr-defined]


def test_a_new_neighbor_is_written_alone() -> None:
    """With the frame unchanged a new neighbor costs its own entries: its route and its
    owner for the source check, however many neighbors are programmed."""
    topology, neighbors = build()
    path = BpfPath()
    path.maps = {name: DictMap() for name in bpfpath.MAP_SIZES}  # type: ignore[misc]
    path.program = mock.Mock(prog_fd=3)
    with mock.patch.object(bpfpath.tchook, "attach", return_value=7):
        neighbors.keep_journal()
        for n in range(200):
            neighbors.put(
                Neighbor("lan", bytes(14) + n.to_bytes(2, "big"), "vm1", MACS[0], last_seen=1.0)
            )
        path.sync(topology, neighbors, 1.0, full=True)
        neighbors.take_journal()
        updates, full = path.stats["updates"], path.stats["full_syncs"]
        neighbors.learn("lan", ADDRESSES[5], "vm2", MACS[1], 2.0)
        path.sync(topology, neighbors, 2.0)
    assert path.stats["full_syncs"] == full
    assert path.stats["updates"] - updates == 2
