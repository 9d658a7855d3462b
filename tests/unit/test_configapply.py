"""Configuration application: restore and reload as a diff, every step's Status checked."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

from supervisor_parts import RecordingFastPath, ScriptedSaver, committer_for, lan_config

from portier.config import load_config
from portier.status import Code, Status
from portier.supervisor.configapply import ConfigApplier, config_snapshot
from portier.supervisor.state import ProxyState
from portier.supervisor.workerpool import WorkerPool

TOML = """
[daemon]
runtime_dir = "{run}"
state_dir = "{state}"

[fastpath]
enabled = {fastpath}

[[group]]
name = "lan"
upstream = "up0"
members = [{members}]
"""


def write_config(path: Path, tmp_path: Path, *, members: str, fastpath: str = "true") -> None:
    path.write_text(
        TOML.format(
            run=tmp_path / "run", state=tmp_path / "state", members=members, fastpath=fastpath
        )
    )


def no_state(state_dir, topology, neighbors):
    return None


def groups(state: ProxyState) -> dict[str, list[str]]:
    return {name: list(g.members) for name, g in state.topology.groups.items()}


def test_a_fresh_start_applies_the_configuration(tmp_path):
    config = lan_config(tmp_path)
    state = ProxyState(config)
    applier = ConfigApplier(state, config, config_path=None, load_state=no_state)
    assert applier.restore() == []
    assert groups(state) == {"lan": ["up0", "vm1", "vm2"]}
    assert state.topology.groups["lan"].upstream == "up0"
    assert applier.applied == config_snapshot(config)


def test_restore_survives_an_unusable_record_of_the_old_configuration(tmp_path):
    config = lan_config(tmp_path)
    state = ProxyState(config)

    def restored(state_dir, topology, neighbors):
        return SimpleNamespace(
            config={"groups": [{"members": 3}]}, neighbors_restored=0, neighbors_aged_out=0
        )

    applier = ConfigApplier(state, config, config_path=None, load_state=restored)
    assert applier.restore() == []
    assert groups(state) == {"lan": ["up0", "vm1", "vm2"]}


def test_restore_survives_a_loader_that_fails(tmp_path):
    config = lan_config(tmp_path)
    state = ProxyState(config)

    def broken(state_dir, topology, neighbors):
        topology.create_group("half")  # applied in part, then it failed
        raise KeyError("groups")

    applier = ConfigApplier(state, config, config_path=None, load_state=broken)
    applier.restore()
    assert groups(state) == {"lan": ["up0", "vm1", "vm2"]}


def applier_with_file(tmp_path, members: str, *, fastpath: str = "true"):
    path = tmp_path / "portier.toml"
    write_config(path, tmp_path, members=members, fastpath=fastpath)
    config = load_config(path)
    state = ProxyState(config)
    fast, saver = RecordingFastPath(), ScriptedSaver()
    applier = ConfigApplier(state, config, config_path=path, load_state=no_state)
    applier.restore()
    applier.committer = committer_for(state, fastpath=fast, saver=saver)
    # Never spawned: the pool only has to be asked.
    applier.pool = WorkerPool("ipc:///nonexistent", worker_args=[], on_state=lambda h: None)
    started: list[str] = []

    async def start(name):
        started.append(name)

    applier.pool.start = start  # type: ignore[method-assign]
    applier.fastpath = fast
    applier.background = lambda coroutine, what: coroutine.close()
    return applier, path, state, fast, saver, started


def test_reload_applies_fastpath_enabled(tmp_path):
    applier, path, _state, fast, _, _ = applier_with_file(tmp_path, '"vm1"')
    write_config(path, tmp_path, members='"vm1"', fastpath="false")
    status, result = asyncio.run(applier.reload())
    assert status.ok, status
    assert ("set_enabled", False) in fast.calls
    assert result["changes"] == {"fastpath": "off"}
    write_config(path, tmp_path, members='"vm1"', fastpath="true")
    asyncio.run(applier.reload())
    assert fast.calls.count(("set_enabled", True)) == 1


def test_a_failed_reload_step_is_reported_and_the_rest_applies(tmp_path, caplog):
    applier, path, state, _, _, started = applier_with_file(tmp_path, '"vm1"')
    add_to_group = state.topology.add_to_group

    def refuse_vm2(name, group, *, upstream=False):
        if name == "vm2":
            return Status(Code.FAILED_PRECONDITION, "vm2 is busy")
        return add_to_group(name, group, upstream=upstream)

    state.topology.add_to_group = refuse_vm2  # type: ignore[method-assign]
    write_config(path, tmp_path, members='"vm1", "vm2", "vm3"')
    status, result = asyncio.run(applier.reload())
    assert status.code == Code.FAILED_PRECONDITION
    assert "1 step(s) failed" in status.text()
    assert "Failed to add vm2 to group lan: vm2 is busy" in status.text()
    assert result["failed"] == ["Failed to add vm2 to group lan: vm2 is busy"]
    assert groups(state) == {"lan": ["up0", "vm1", "vm3"]}  # the other steps applied
    assert started == ["vm2", "vm3"]  # bound, so its worker runs (it still learns links)
    assert "vm2 is busy" in caplog.text


def test_a_reload_that_could_not_be_saved_still_applies_and_says_so(tmp_path):
    applier, path, state, _, saver, _ = applier_with_file(tmp_path, '"vm1"')
    saver.error = "No space left on device"
    write_config(path, tmp_path, members='"vm1", "vm2"')
    status, _result = asyncio.run(applier.reload())
    assert status.ok
    assert status.text() == "state could not be saved: No space left on device"
    assert groups(state) == {"lan": ["up0", "vm1", "vm2"]}


def test_an_invalid_file_changes_nothing(tmp_path):
    applier, path, state, _fast, saver, _ = applier_with_file(tmp_path, '"vm1"')
    path.write_text("[[group]]\nname = 3\n")
    status, _ = asyncio.run(applier.reload())
    assert status.code == Code.INVALID_ARGUMENT
    assert "the running state is unchanged" in status.text()
    assert groups(state) == {"lan": ["up0", "vm1"]} and not saver.saves
