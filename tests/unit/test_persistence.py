"""The state file: what is restored, what is refused whole, and how saving reports failure.

Refused files are built by saving a real state and then breaking one part of the stored
document; a refused file restores nothing at all, is moved aside, and is reported.  The
saver's failure paths that need a full or read-only file system are in
tests/netns/test_state_saver.py (they mount a small tmpfs, which needs root).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.supervisor.persistence import STATE_FILE, StateSaver, load_state, save_state

CONFIG = {
    "groups": [{"name": "lan", "upstream": "up0", "members": ["vm1"]}],
    "nested": False,
    "loop_disable_seconds": 3600,
}
ADDRESS = bytes.fromhex("20010db8000100000000000000000042")


def saved_state(state_dir: Path) -> Path:
    """A real state file: a group with two members, one learned neighbor."""
    topology = Topology()
    topology.create_group("lan")
    for name, mac in (("up0", b"\x02\x00\x00\x00\x00\x01"), ("vm1", b"\x02\x00\x00\x00\x00\x02")):
        topology.bind(name)
        topology.add_to_group(name, "lan", upstream=name == "up0")
        topology.update_link(name, ifindex=7, mac=mac, mtu=1500)
    neighbors = NeighborCache()
    now = time.monotonic()
    neighbors.put(
        Neighbor("lan", ADDRESS, "vm1", b"\x02\x00\x00\x00\x00\x42", False, now, now, now + 30)
    )
    return save_state(state_dir, topology, neighbors, CONFIG)


def load_fresh(state_dir: Path):
    topology, neighbors = Topology(), NeighborCache()
    return load_state(state_dir, topology, neighbors), topology, neighbors


def test_a_saved_state_comes_back(tmp_path):
    saved_state(tmp_path)
    restored, topology, neighbors = load_fresh(tmp_path)
    assert restored is not None and restored.neighbors_restored == 1
    assert restored.config == CONFIG
    assert topology.groups["lan"].members == ["up0", "vm1"]
    assert topology.groups["lan"].upstream == "up0"
    assert [n.address for n in neighbors] == [ADDRESS]


def rewrite(path: Path, change: Callable[[dict[str, Any]], None]) -> bytes:
    document = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
    change(document)
    raw = msgpack.packb(document, use_bin_type=True)
    path.write_bytes(raw)
    return raw


def interface(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(i for i in document["topology"]["interfaces"] if i["name"] == name)


def set_in(where: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any):
    def change(document: dict[str, Any]) -> None:
        where(document)[key] = value

    return change


def drop(where: Callable[[dict[str, Any]], dict[str, Any]], key: str):
    def change(document: dict[str, Any]) -> None:
        del where(document)[key]

    return change


def vm1(d: dict[str, Any]) -> dict[str, Any]:
    return interface(d, "vm1")


def lan_group(d: dict[str, Any]) -> dict[str, Any]:
    return d["topology"]["groups"][0]


def first_neighbor(d: dict[str, Any]) -> dict[str, Any]:
    return d["neighbors"][0]


def config_group(d: dict[str, Any]) -> dict[str, Any]:
    return d["config"]["groups"][0]


def document_itself(d: dict[str, Any]) -> dict[str, Any]:
    return d


MALFORMED = {
    # topology
    "interface mac not bytes": set_in(vm1, "mac", 5),
    "interface mac too long": set_in(vm1, "mac", bytes(33)),
    "interface in a group that does not exist": set_in(vm1, "group", "nosuch"),
    "interface name invalid": set_in(vm1, "name", "a/b"),
    "unknown disable reason": set_in(vm1, "disable_reasons", ["bored"]),
    "mtu a string": set_in(vm1, "mtu", "1500"),
    "member not bound": set_in(lan_group, "members", ["up0", "vm1", "ghost"]),
    "upstream not a member": set_in(lan_group, "upstream", "vm1x"),
    "prefix length out of range": set_in(lan_group, "onlink_prefixes", [[ADDRESS, 300, None]]),
    "loop disable not a number": set_in(vm1, "loop_disabled_until", "soon"),
    "topology without groups": drop(lambda d: d["topology"], "groups"),
    # neighbors
    "neighbor mac wrong length": set_in(first_neighbor, "mac", b"\x02"),
    "neighbor time a string": set_in(first_neighbor, "last_seen", "now"),
    "neighbor time not finite": set_in(first_neighbor, "last_seen", math.nan),
    "neighbors not a list": set_in(document_itself, "neighbors", {"a": 1}),
    # saved_at
    "saved_at a string": set_in(document_itself, "saved_at", "yesterday"),
    "saved_at missing": drop(document_itself, "saved_at"),
    "saved_at infinite": set_in(document_itself, "saved_at", math.inf),
    # the configuration snapshot
    "config groups entry without name": drop(config_group, "name"),
    "config groups entry without members": drop(config_group, "members"),
    "config groups members not a list": set_in(config_group, "members", 5),
    "config groups member not a string": set_in(config_group, "members", [7]),
    "config groups upstream not a string": set_in(config_group, "upstream", 1),
    "config groups entry not a map": set_in(document_itself, "config", {"groups": ["lan"]}),
    "config not a map": set_in(document_itself, "config", ["groups"]),
    "config nested not a bool": set_in(lambda d: d["config"], "nested", "yes"),
}


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_a_malformed_file_restores_nothing_and_is_moved_aside(tmp_path, caplog, shape):
    path = saved_state(tmp_path)
    raw = rewrite(path, MALFORMED[shape])
    with caplog.at_level(logging.ERROR, logger="portier.supervisor"):
        restored, topology, neighbors = load_fresh(tmp_path)
    assert restored is None
    assert topology.groups == {} and topology.interfaces == {}
    assert len(neighbors) == 0
    assert not path.exists()
    aside = list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == raw
    assert "is unusable" in caplog.text and str(aside[0]) in caplog.text


def test_each_refused_file_keeps_its_own_copy(tmp_path):
    for _ in range(2):
        path = saved_state(tmp_path)
        rewrite(path, set_in(document_itself, "saved_at", "x"))
        assert load_fresh(tmp_path)[0] is None
    assert len(list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))) == 2


def test_a_file_that_cannot_be_moved_aside_still_starts_from_the_configuration(
    tmp_path, monkeypatch
):
    path = saved_state(tmp_path)
    rewrite(path, set_in(document_itself, "saved_at", "x"))

    def refuse(*args: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", refuse)
    restored, topology, _ = load_fresh(tmp_path)
    assert restored is None and topology.groups == {}


# --- StateSaver on an ordinary file system ---------------------------------------------


def small_state() -> tuple[Topology, NeighborCache]:
    topology = Topology()
    topology.create_group("lan")
    return topology, NeighborCache()


def test_save_writes_and_records_success(tmp_path):
    saver = StateSaver(tmp_path)
    topology, neighbors = small_state()
    status = asyncio.run(saver.save(topology, neighbors, CONFIG))
    assert status.ok
    view = saver.view()
    assert view["error"] is None and view["failing_since"] is None and view["failures"] == 0
    assert view["saved_at"] is not None
    restored, again, _ = load_fresh(tmp_path)
    assert restored is not None and list(again.groups) == ["lan"]


def test_saves_are_serialized_and_coalesced(tmp_path, monkeypatch):
    from portier.supervisor import persistence

    writes: list[bytes] = []
    running = 0
    overlapped = []
    original = persistence.write_atomically

    def slow_write(path: Path, data: bytes) -> None:
        nonlocal running
        running += 1
        overlapped.append(running)
        try:
            time.sleep(0.05)  # a slow disk: the window a second write would overlap in
            original(path, data)
            writes.append(data)
        finally:
            running -= 1

    monkeypatch.setattr(persistence, "write_atomically", slow_write)
    saver = StateSaver(tmp_path)
    topology, neighbors = small_state()

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(saver.save(topology, neighbors, CONFIG))
        await asyncio.sleep(0.01)  # the first write is under way
        rest = []
        for n in range(10):
            topology.create_group(f"g{n}")
            rest.append(asyncio.ensure_future(saver.save(topology, neighbors, CONFIG)))
        return await asyncio.gather(first, *rest)

    statuses = asyncio.run(scenario())
    assert all(s.ok for s in statuses)
    assert max(overlapped) == 1
    assert len(writes) == 2  # the first, then one with everything asked for meanwhile
    restored, again, _ = load_fresh(tmp_path)
    assert restored is not None and len(again.groups) == 11


def test_a_failing_write_is_recorded_and_never_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    saver = StateSaver(blocker / "state")  # its parent is a file: every write fails
    topology, neighbors = small_state()
    status = asyncio.run(saver.save(topology, neighbors, CONFIG))
    assert not status.ok and "Not a directory" in status.text()
    view = saver.view()
    assert view["error"] == "Not a directory" and view["failures"] == 1
    assert view["failing_since"] is not None and view["saved_at"] is None


def test_a_save_after_close_fails_without_raising(tmp_path):
    saver = StateSaver(tmp_path)
    topology, neighbors = small_state()
    saver.close()
    saver.close()
    status = asyncio.run(saver.save(topology, neighbors, CONFIG))
    assert not status.ok and saver.view()["error"] == "the state saver is closed"


def test_a_cancelled_save_still_finishes_its_write_in_order(tmp_path, monkeypatch):
    from portier.supervisor import persistence

    original = persistence.write_atomically
    started = []

    def slow_write(path: Path, data: bytes) -> None:
        started.append(data)
        time.sleep(0.05)
        original(path, data)

    monkeypatch.setattr(persistence, "write_atomically", slow_write)
    saver = StateSaver(tmp_path)
    topology, neighbors = small_state()

    async def scenario() -> None:
        first = asyncio.ensure_future(saver.save(topology, neighbors, CONFIG))
        await asyncio.sleep(0.01)
        first.cancel()
        topology.create_group("later")
        assert (await saver.save(topology, neighbors, CONFIG)).ok

    asyncio.run(scenario())
    assert len(started) == 2 and saver.view()["error"] is None
    restored, again, _ = load_fresh(tmp_path)
    assert restored is not None and sorted(again.groups) == ["lan", "later"]
