"""Membership rules (original-behaviour.md §3, §8.7) without the original's bugs (§9.2)."""

import pytest

from portier.groups import DisableReason, Topology, check_interface_name
from portier.status import Code


@pytest.fixture
def topology() -> Topology:
    t = Topology(loop_disable_s=3600)
    for index, name in enumerate(("eth0", "tap0", "tap1"), start=2):
        assert t.bind(name)
        assert t.update_link(name, ifindex=index, mac=bytes([2, 0, 0, 0, 0, index]))
    return t


@pytest.mark.parametrize("name", ["lan", "eth0-group", "A_1"])
def test_valid_group_names(topology, name):
    assert topology.create_group(name)


@pytest.mark.parametrize(
    "name", ["", " lan", "lan ", "l an", "a|b", "a@b", "$", "^", "a\x01", "grüß", 5]
)
def test_invalid_group_names(topology, name):
    assert topology.create_group(name).code == Code.INVALID_ARGUMENT


def test_create_twice_and_release_twice(topology):
    assert topology.create_group("lan")
    assert topology.create_group("lan").code == Code.ALREADY_EXISTS
    assert topology.release_group("lan")
    assert topology.release_group("lan").code == Code.DOES_NOT_EXIST


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "a:b", ".", "..", None])
def test_invalid_interface_names(name):
    assert check_interface_name(name).code == Code.INVALID_ARGUMENT


def test_bind_twice_and_release_unknown(topology):
    assert topology.bind("eth0").code == Code.ALREADY_EXISTS
    assert topology.release("nope").code == Code.DOES_NOT_EXIST


def test_new_interface_is_groupless_and_disabled():
    topology = Topology()
    topology.bind("eth0")
    iface = topology.interfaces["eth0"]
    assert iface.disable_reasons == {DisableReason.GROUPLESS, DisableReason.NOT_PRESENT}
    assert not iface.enabled
    topology.update_link("eth0", ifindex=7, mac=b"\x02" * 6)
    assert iface.disable_reasons == {DisableReason.GROUPLESS}
    topology.update_link("eth0", ifindex=0)  # deleted
    assert DisableReason.NOT_PRESENT in iface.disable_reasons


def test_add_enables_and_remove_disables(topology):
    topology.create_group("lan")
    assert topology.add_to_group("eth0", "lan", upstream=True)
    assert topology.interfaces["eth0"].enabled
    assert topology.groups["lan"].upstream == "eth0"
    assert topology.remove_from_group("eth0")
    assert topology.interfaces["eth0"].disable_reasons == {DisableReason.GROUPLESS}
    assert topology.groups["lan"].upstream is None


def test_add_errors_in_order(topology):
    topology.create_group("lan")
    topology.create_group("wifi")
    assert topology.add_to_group("nope", "nope").code == Code.DOES_NOT_EXIST
    assert topology.add_to_group("eth0", "nope").code == Code.DOES_NOT_EXIST
    assert topology.add_to_group("eth0", "lan")
    same = topology.add_to_group("eth0", "lan")
    assert same.code == Code.ALREADY_EXISTS and "lan" in same.message
    assert topology.add_to_group("eth0", "wifi").code == Code.ALREADY_EXISTS


def test_remove_unknown_and_groupless(topology):
    assert topology.remove_from_group("nope").code == Code.DOES_NOT_EXIST
    assert topology.remove_from_group("eth0").code == Code.NO_OPERATION


def test_member_order_is_join_order_and_upstream_rules(topology):
    topology.create_group("lan")
    for name in ("tap1", "eth0", "tap0"):
        topology.add_to_group(name, "lan")
    assert topology.groups["lan"].members == ["tap1", "eth0", "tap0"]
    assert topology.set_upstream("eth0")
    assert topology.set_upstream("eth0")  # already upstream: still OK
    assert topology.set_upstream("tap0")  # replaces
    assert topology.groups["lan"].upstream == "tap0"
    assert topology.unset_upstream("lan")
    assert topology.groups["lan"].upstream is None
    assert "tap0" in topology.groups["lan"].members
    assert topology.unset_upstream("lan")  # no upstream: still OK
    assert topology.unset_upstream("nope").code == Code.DOES_NOT_EXIST


def test_set_upstream_errors(topology):
    assert topology.set_upstream("nope").code == Code.DOES_NOT_EXIST
    assert topology.set_upstream("eth0").code == Code.DOES_NOT_EXIST  # in no group


def test_thirty_members(topology):
    topology.create_group("big")
    for i in range(30):
        topology.bind(f"vm{i}")
        topology.update_link(f"vm{i}", ifindex=100 + i)
        assert topology.add_to_group(f"vm{i}", "big")
    for i in range(30):
        assert topology.remove_from_group(f"vm{i}")
    assert topology.groups["big"].members == []


def test_release_group_detaches_every_member(topology):
    topology.create_group("lan")
    topology.add_to_group("eth0", "lan", upstream=True)
    topology.add_to_group("tap0", "lan")
    assert topology.release_group("lan")
    for name in ("eth0", "tap0"):
        assert topology.interfaces[name].group is None
        assert DisableReason.GROUPLESS in topology.interfaces[name].disable_reasons


def test_release_interface_leaves_its_group(topology):
    topology.create_group("lan")
    topology.add_to_group("tap0", "lan", upstream=True)
    assert topology.release("tap0")
    assert topology.groups["lan"].members == []
    assert topology.groups["lan"].upstream is None


def test_loop_disable_expires_at_its_time(topology):
    topology.create_group("lan")
    topology.add_to_group("tap0", "lan")
    until = topology.detect_loop("tap0", now=100.0)
    assert until == 3700.0
    assert not topology.interfaces["tap0"].enabled
    assert topology.next_deadline() == 3700.0
    assert topology.expire(3699.9) == []
    assert topology.expire(3700.0) == ["tap0"]
    assert topology.interfaces["tap0"].enabled


def test_new_detection_restarts_the_timer(topology):
    topology.create_group("lan")
    topology.add_to_group("tap0", "lan")
    topology.detect_loop("tap0", now=0.0)
    topology.detect_loop("tap0", now=1000.0)
    assert topology.expire(3600.0) == []
    assert topology.expire(4600.0) == ["tap0"]


def test_leaving_the_group_clears_the_loop_disable(topology):
    """Original bug §9.2.2: the label survived and the interface stayed disabled for ever."""
    topology.create_group("lan")
    topology.create_group("wifi")
    topology.add_to_group("tap0", "lan")
    topology.detect_loop("tap0", now=0.0)
    topology.remove_from_group("tap0")
    topology.add_to_group("tap0", "wifi")
    assert topology.interfaces["tap0"].enabled
    assert topology.next_deadline() is None


def test_releasing_the_group_clears_the_loop_disable(topology):
    topology.create_group("lan")
    topology.add_to_group("tap0", "lan")
    topology.detect_loop("tap0", now=0.0)
    topology.release_group("lan")
    assert topology.interfaces["tap0"].loop_disabled_until is None
    assert topology.interfaces["tap0"].disable_reasons == {DisableReason.GROUPLESS}


def test_enable_clears_soft_reasons_only(topology):
    topology.create_group("lan")
    topology.add_to_group("tap0", "lan")
    topology.detect_loop("tap0", now=0.0)
    topology.set_reason("tap0", DisableReason.SOFTWARE_DISABLED, True)
    topology.set_reason("tap0", DisableReason.LINK_DOWN, True)
    assert topology.enable("tap0")
    assert topology.interfaces["tap0"].disable_reasons == {DisableReason.LINK_DOWN}
    assert not topology.interfaces["tap0"].enabled
    assert topology.enable("tap0").code == Code.NO_OPERATION
    topology.set_reason("tap0", DisableReason.LINK_DOWN, False)
    assert topology.interfaces["tap0"].enabled
    assert topology.enable("nope").code == Code.DOES_NOT_EXIST


def test_own_macs_follow_link_updates(topology):
    before = topology.own_macs()
    topology.update_link("eth0", mac=b"\x04" * 6)
    assert topology.own_macs() == (before - {bytes([2, 0, 0, 0, 0, 2])}) | {b"\x04" * 6}
    topology.release("eth0")
    assert b"\x04" * 6 not in topology.own_macs()
    assert topology.update_link("eth0", mtu=1400).code == Code.DOES_NOT_EXIST
