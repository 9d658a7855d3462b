"""portierd with a state file it must refuse: it starts from its configuration, always.

A state file whose topology was fine but whose neighbors, `saved_at` or stored
configuration snapshot were not used to end the daemon (exit 2 "invalid configuration",
or a KeyError and a crash loop under systemd).
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
from labdaemon import Daemon

from portier.groups import Topology
from portier.neighbors import Neighbor, NeighborCache
from portier.supervisor.persistence import STATE_FILE, save_state


def lab_state(state_dir, members: list[str]) -> None:
    """A state like the lab's own, plus a group the configuration does not have."""
    topology = Topology()
    for group in ("lan", "extra"):
        topology.create_group(group)
    for name in ["up0", *members]:
        topology.bind(name)
        topology.add_to_group(name, "lan", upstream=name == "up0")
    now = time.monotonic()
    neighbors = NeighborCache()
    neighbors.put(
        Neighbor("lan", bytes(15) + b"\x42", members[0], b"\x02" * 6, False, now, now, now + 30)
    )
    config = {
        "groups": [{"name": "lan", "upstream": "up0", "members": members}],
        "nested": False,
        "loop_disable_seconds": 3600,
    }
    save_state(state_dir, topology, neighbors, config)


def without_members(d: dict[str, Any]) -> None:
    del d["config"]["groups"][0]["members"]


def bad_neighbor(d: dict[str, Any]) -> None:
    d["neighbors"][0]["mac"] = b"\x02"


def bad_saved_at(d: dict[str, Any]) -> None:
    d["saved_at"] = "yesterday"


@pytest.mark.parametrize("change", [without_members, bad_neighbor, bad_saved_at])
def test_a_refused_state_file_starts_from_the_configuration(make_lab, change):
    lab = make_lab(guests=1, radvd=False)
    state_dir = lab.workdir / "state"
    lab_state(state_dir, [g.port for g in lab.guest_list])
    path = state_dir / STATE_FILE
    document = msgpack.unpackb(path.read_bytes(), raw=False)
    change(document)
    path.write_bytes(msgpack.packb(document, use_bin_type=True))
    daemon = Daemon(lab).start()
    # Nothing of the file: not even the group only it had.
    assert [g["name"] for g in daemon.call("groups")] == ["lan"]
    # (The router may be learned live meanwhile; the stored neighbor is not restored.)
    assert "::42" not in {n["address"] for n in daemon.call("neighbors")}
    assert len(list(state_dir.glob(f"{STATE_FILE}.corrupt-*"))) == 1
    assert "is unusable" in daemon.log_path.read_text()
