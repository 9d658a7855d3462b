"""Control operations on the parts they are handed: replies, and what a failed save says."""

import asyncio

from supervisor_parts import Broadcasts, RecordingFastPath, ScriptedSaver, committer_for, lan_config

from portier.status import OK, Code
from portier.supervisor.operations import OPERATIONS, OperationParts
from portier.supervisor.state import ProxyState
from portier.supervisor.workerpool import WorkerPool


def parts(tmp_path, saver: ScriptedSaver, broadcast: Broadcasts) -> OperationParts:
    config = lan_config(tmp_path)
    state = ProxyState(config)
    state.apply_config_groups(config)
    stopped: list[str] = []

    def background(coroutine, what):
        stopped.append(what)
        coroutine.close()

    return OperationParts(
        state=state,
        pool=WorkerPool("ipc:///x", worker_args=[], on_state=lambda h: None),
        committer=committer_for(state, saver=saver, broadcast=broadcast),
        fastpath=RecordingFastPath(),
        reload=lambda: asyncio.sleep(0, (OK, None)),
        summary=lambda: {"ready": True},
        background=background,
    )


def call(part: OperationParts, op: str, **args):
    return asyncio.run(OPERATIONS[op](part, args))


def test_a_change_is_replicated_and_saved(tmp_path):
    saver, broadcast = ScriptedSaver(), Broadcasts()
    part = parts(tmp_path, saver, broadcast)
    status, _ = call(part, "group_create", group="extra")
    assert status == OK and "extra" in part.state.topology.groups
    assert broadcast.sent[-1][-1]["op"] == "topology" and len(saver.saves) == 1


def test_a_change_that_cannot_be_saved_still_applies_and_says_why(tmp_path):
    saver = ScriptedSaver()
    saver.error = "No space left on device"
    part = parts(tmp_path, saver, Broadcasts())
    status, _ = call(part, "group_create", group="extra")
    assert status.code == Code.OK
    assert status.text() == "state could not be saved: No space left on device"
    assert "extra" in part.state.topology.groups
    status, result = call(part, "flush", group="lan")
    assert status.ok and "could not be saved" in status.text() and result == {"flushed": 0}


def test_a_refused_operation_is_neither_replicated_nor_saved(tmp_path):
    saver, broadcast = ScriptedSaver(), Broadcasts()
    part = parts(tmp_path, saver, broadcast)
    status, _ = call(part, "group_create", group="lan")
    assert status.code == Code.ALREADY_EXISTS
    assert not broadcast.sent and not saver.saves
