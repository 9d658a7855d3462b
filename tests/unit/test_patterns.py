"""Member patterns: the configuration, the topology's rule, the guests plan, reload, state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from supervisor_parts import RecordingFastPath, ScriptedSaver, committer_for

from portier.config import ConfigError, parse_config
from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.status import Code
from portier.supervisor.configapply import ConfigApplier, config_snapshot
from portier.supervisor.guests import plan_guests
from portier.supervisor.persistence import load_state, save_state
from portier.supervisor.reload import plan_reload
from portier.supervisor.state import ProxyState

TWO_GROUPS = """
[[group]]
name = "lan"
upstream = "up0"
members = ["tap0", "vm*"]

[[group]]
name = "dmz"
members = ["vm[0-4]*", "ct?"]
"""


def topology_of(text: str) -> Topology:
    config = parse_config(text)
    state = ProxyState(config)
    assert state.apply_config_groups(config)
    return state.topology


def test_a_pattern_in_members_is_kept_as_a_pattern_not_bound_as_a_name():
    config = parse_config(TWO_GROUPS)
    lan = config.groups[0]
    assert lan.interfaces == ("up0", "tap0") and lan.patterns == ("vm*",)
    topology = topology_of(TWO_GROUPS)
    assert "vm*" not in topology.interfaces
    assert sorted(topology.interfaces) == ["tap0", "up0"]
    assert topology.groups["lan"].patterns == ["vm*"]
    assert topology.groups["dmz"].patterns == ["vm[0-4]*", "ct?"]


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ('[[group]]\nname = "a"\nupstream = "eth*"', "group[0].upstream", "exact"),
        ('[[group]]\nname = "a"\nmembers = ["vm/*"]', "group[0].members[0]", "invalid"),
        (
            '[[group]]\nname = "a"\nmembers = ["vm*"]\n[[group]]\nname = "b"\nmembers = ["vm*"]',
            "group[1].members[0]",
            "pattern vm* is already in group a",
        ),
    ],
)
def test_a_bad_pattern_is_refused_with_its_place(text, where, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.where == where and problem in caught.value.problem


def test_an_appearing_name_is_bound_by_the_first_group_and_overlap_is_reported():
    topology = topology_of(TWO_GROUPS)
    plan = plan_guests(topology, ["lo0", "vm1", "vm7", "ct1", "ct12", "tap0", "eth0"])
    assert plan.bind == [("ct1", "dmz", "ct?"), ("vm1", "lan", "vm*"), ("vm7", "lan", "vm*")]
    assert plan.release == []
    assert plan.overlaps == {"vm1": [("lan", "vm*"), ("dmz", "vm[0-4]*")]}


def bind_as_guest(topology: Topology, name: str, group: str, pattern: str) -> None:
    assert topology.bind(name) and topology.add_to_group(name, group)
    topology.interfaces[name].bound_by = pattern


def test_a_guest_is_released_when_its_link_or_its_pattern_goes_and_a_name_is_kept():
    topology = topology_of(TWO_GROUPS)
    bind_as_guest(topology, "vm1", "lan", "vm*")
    bind_as_guest(topology, "ct1", "dmz", "ct?")
    # tap0 is named: absent links never release it (its worker waits for it).
    plan = plan_guests(topology, ["ct1"])
    assert plan.release == ["vm1"] and plan.bind == []
    assert topology.remove_pattern("ct?")
    assert plan_guests(topology, ["vm1", "ct1"]).release == ["ct1"]
    # The exact name beats a pattern: tap9 bound by name is never the pattern's.
    assert topology.bind("vm9")
    assert plan_guests(topology, ["vm1", "vm9"]).bind == []


def test_topology_patterns_have_one_owner():
    topology = topology_of(TWO_GROUPS)
    assert topology.add_pattern("vm*", "dmz").code == Code.ALREADY_EXISTS
    assert topology.add_pattern("vm1", "dmz").code == Code.INVALID_ARGUMENT
    assert topology.add_pattern("x*", "nope").code == Code.DOES_NOT_EXIST
    assert topology.remove_pattern("x*").code == Code.DOES_NOT_EXIST


def test_reload_moves_adds_and_removes_patterns_and_keeps_runtime_ones():
    old = parse_config(TWO_GROUPS)
    topology = topology_of(TWO_GROUPS)
    assert topology.add_pattern("veth*", "lan")  # added at run time: kept
    new = parse_config(
        TWO_GROUPS.replace('["tap0", "vm*"]', '["tap0", "vnet*"]').replace('"ct?"', '"vm*"')
    )
    plan = plan_reload(topology, old.groups_wire(), new.groups_wire())
    assert plan.remove_patterns == ["vm*", "ct?"]
    assert "veth*" not in plan.remove_patterns
    assert plan.add_patterns == [("vnet*", "lan"), ("vm*", "dmz")]


def test_reload_applies_the_pattern_diff(tmp_path):
    config = parse_config(TWO_GROUPS)
    state = ProxyState(config)
    applier = ConfigApplier(state, config, config_path=None, load_state=lambda *a: None)
    assert applier.restore() == []
    bind_as_guest(state.topology, "vm1", "lan", "vm*")
    new = parse_config(TWO_GROUPS.replace('"vm*"]', '"vnet*"]'))
    result = applier.apply_diff(applier.applied, config_snapshot(new))
    assert result.failures == []
    assert state.topology.groups["lan"].patterns == ["vnet*"]
    assert plan_guests(state.topology, ["vm1"]).release == ["vm1"]


def test_a_name_configured_exactly_takes_over_a_pattern_bound_interface(tmp_path):
    config = parse_config(TWO_GROUPS)
    state = ProxyState(config)
    applier = ConfigApplier(state, config, config_path=None, load_state=lambda *a: None)
    applier.restore()
    bind_as_guest(state.topology, "vm1", "lan", "vm*")
    new = parse_config(TWO_GROUPS.replace('["tap0", "vm*"]', '["tap0", "vm1", "vm*"]'))
    applier.apply_diff(applier.applied, config_snapshot(new))
    assert state.topology.interfaces["vm1"].bound_by is None
    assert plan_guests(state.topology, []).release == []


def test_patterns_and_who_they_bound_survive_a_restart(tmp_path: Path):
    topology = topology_of(TWO_GROUPS)
    bind_as_guest(topology, "vm1", "lan", "vm*")
    save_state(tmp_path, topology, NeighborCache(), {"groups": []})
    restored = Topology()
    assert load_state(tmp_path, restored, NeighborCache()) is not None
    assert restored.groups["dmz"].patterns == ["vm[0-4]*", "ct?"]
    assert restored.interfaces["vm1"].bound_by == "vm*"
    assert restored.interfaces["tap0"].bound_by is None


def test_pattern_operations_add_and_remove(tmp_path):
    from portier.supervisor.operations import OPERATIONS, OperationParts
    from portier.supervisor.workerpool import WorkerPool

    config = parse_config(TWO_GROUPS)
    state = ProxyState(config)
    state.apply_config_groups(config)
    applied: list[int] = []

    async def apply_guests():
        applied.append(1)
        return [], {"bound": [["vnet0", "lan", "vnet*"]]}

    def background(coroutine, what):
        coroutine.close()

    parts = OperationParts(
        state=state,
        pool=WorkerPool("ipc:///x", worker_args=[], on_state=lambda h: None),
        committer=committer_for(state, saver=ScriptedSaver()),
        fastpath=RecordingFastPath(),
        reload=lambda: asyncio.sleep(0, (None, None)),  # type: ignore[arg-type]
        summary=dict,
        background=background,
        apply_guests=apply_guests,
    )

    def call(op, **args):
        return asyncio.run(OPERATIONS[op](parts, args))

    status, result = call("add", interface="vnet*", group="lan")
    assert status.ok and result == {"bound": ["vnet0"]} and applied == [1]
    assert state.topology.groups["lan"].patterns == ["vm*", "vnet*"]
    status, _ = call("add", interface="vnet*", group="dmz")
    assert status.code == Code.ALREADY_EXISTS
    status, _ = call("add", interface="up*", group="lan", upstream=True)
    assert status.code == Code.INVALID_ARGUMENT and "exact" in status.text()
    status, _ = call("remove", interface="vnet*")
    assert status.ok and state.topology.groups["lan"].patterns == ["vm*"]
    status, _ = call("remove", interface="vnet*")
    assert status.code == Code.DOES_NOT_EXIST
