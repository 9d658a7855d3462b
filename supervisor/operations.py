"""Control operations: one small function per operation, from arguments to a reply.

Arguments arrive already checked against the schema's field types; each function checks
their values, changes state through the parts it is handed (`OperationParts`: the state,
the worker pool, the committer, the fast path, reload and the summary), and returns a
Status plus a result.  A change that applied but could not be saved still succeeds, and
its reply says the state could not be saved and why.  `OUTCOMES` maps the original
Portier's eight operations onto its outcome names (SUCCESS, EXISTS, DOES_NOT_EXIST,
NO_OPERATION, FAILED, ...), which replies carry too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from portier.groups import Topology, check_group_name, check_interface_name, is_pattern
from portier.neighbors import NeighborCache
from portier.status import OK, Code, Status
from portier.supervisor import views
from portier.supervisor.commit import Committer, with_save_outcome
from portier.supervisor.state import Change, ProxyState
from portier.supervisor.workerpool import WorkerPool

Result = tuple[Status, Any]


class FastPathControl(Protocol):
    async def check(self, topology: Topology, neighbors: NeighborCache, now: float) -> int: ...

    def view(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class OperationParts:
    """What the operations may use of the supervisor, by name."""

    state: ProxyState
    pool: WorkerPool
    committer: Committer
    fastpath: FastPathControl
    reload: Callable[[], Awaitable[Result]]
    summary: Callable[[], dict[str, Any]]
    background: Callable[[Coroutine[Any, Any, Any], str], object]
    # Binds and releases by the member patterns (guests.py); the changes, uncommitted.
    apply_guests: Callable[[], Awaitable[tuple[list[Change], dict[str, Any]]]] = lambda: (
        _no_guests()
    )

    async def commit(self, op: str, changes: list[Change] | None = None, **fields: Any) -> Result:
        """Replicate, program, save and announce; OK, saying so if the save failed."""
        saved = await self.committer.commit(op, changes, **fields)
        return with_save_outcome(OK, saved), None

    def stop_worker(self, name: str) -> None:
        """In the background: the reply need not wait for the process to exit."""
        self.background(self.pool.stop(name), f"stopping the worker for {name}")


async def _no_guests() -> tuple[list[Change], dict[str, Any]]:
    return [], {}


Operation = Callable[[OperationParts, dict[str, Any]], Awaitable[Result]]
OPERATIONS: dict[str, Operation] = {}
IFF_LOOPBACK = 0x8


def operation(name: str) -> Callable[[Operation], Operation]:
    def register(function: Operation) -> Operation:
        OPERATIONS[name] = function
        return function

    return register


def _outcome(status: Status, table: dict[int, str]) -> str:
    return "SUCCESS" if status.ok else table.get(status.code, "FAILED")


def outcome(op: str, status: Status) -> str | None:
    """The original API's outcome name for one of its eight operations, else None."""
    table = OUTCOMES.get(op)
    return None if table is None else _outcome(status, table)


OUTCOMES: dict[str, dict[int, str]] = {
    "bind": {Code.ALREADY_EXISTS: "EXISTS"},
    "release": {Code.DOES_NOT_EXIST: "DOES_NOT_EXIST"},
    "group_create": {Code.ALREADY_EXISTS: "EXISTS"},
    "group_release": {Code.DOES_NOT_EXIST: "DOES_NOT_EXIST"},
    "add": {Code.ALREADY_EXISTS: "EXISTS", Code.DOES_NOT_EXIST: "DOES_NOT_EXIST"},
    "remove": {Code.NO_OPERATION: "NO_OPERATION", Code.DOES_NOT_EXIST: "DOES_NOT_EXIST"},
    # set-upstream tells an unknown interface from one in no group (below).
    "upstream_set": {
        Code.DOES_NOT_EXIST: "IF_DOES_NOT_EXIST",
        Code.FAILED_PRECONDITION: "GROUP_DOES_NOT_EXIST",
    },
    "upstream_unset": {Code.DOES_NOT_EXIST: "DOES_NOT_EXIST"},
}


def _kernel_interface(name: str) -> Status:
    """The interface must exist, and not be loopback (it would echo every frame)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return Status(Code.DOES_NOT_EXIST, f"Interface {name} does not exist").wrap(
            "Failed to get interface index"
        )
    try:
        flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
    except (OSError, ValueError):
        flags = 0
    if flags & IFF_LOOPBACK:
        return Status(Code.INVALID_ARGUMENT, f"Interface {name} is a loopback interface")
    return OK


# --- read-only views -------------------------------------------------------------------


@operation("status")
async def status(sup: OperationParts, args: dict[str, Any]) -> Result:
    return OK, sup.summary()


@operation("groups")
async def groups(sup: OperationParts, args: dict[str, Any]) -> Result:
    return OK, views.groups_view(sup.state.topology)


@operation("interfaces")
async def interfaces(sup: OperationParts, args: dict[str, Any]) -> Result:
    return OK, views.interfaces_view(sup.state.topology, time.monotonic())


@operation("neighbors")
async def neighbors(sup: OperationParts, args: dict[str, Any]) -> Result:
    group = args.get("group")
    if group is not None and group not in sup.state.topology.groups:
        return Status(Code.DOES_NOT_EXIST, f"Group {group} does not exist"), None
    return OK, views.neighbors_view(sup.state.neighbors, time.monotonic(), group)


@operation("workers")
async def workers(sup: OperationParts, args: dict[str, Any]) -> Result:
    return OK, views.workers_view(sup.pool)


# --- the original API ------------------------------------------------------------------


@operation("bind")
async def bind(sup: OperationParts, args: dict[str, Any]) -> Result:
    name = args["interface"]
    status = check_interface_name(name)
    if status and name in sup.state.topology.interfaces:
        status = Status(Code.ALREADY_EXISTS, f"Interface {name} is already bound")
    if status:
        status = _kernel_interface(name)
    if status:
        status = sup.state.topology.bind(name)
    if not status:
        return status.wrap(f"Failed to bind {name}"), None
    await sup.pool.start(name)
    return await sup.commit("bind", interface=name)


@operation("release")
async def release(sup: OperationParts, args: dict[str, Any]) -> Result:
    name = args["interface"]
    if name not in sup.state.topology.interfaces:
        return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound"), None
    changes = sup.state.forget_interface(name)
    sup.state.topology.release(name)
    sup.stop_worker(name)
    return await sup.commit("release", changes, interface=name)


@operation("group_create")
async def group_create(sup: OperationParts, args: dict[str, Any]) -> Result:
    name = args["group"]
    status = sup.state.topology.create_group(name)
    if not status:
        return status.wrap(f"Failed to create group {name}"), None
    return await sup.commit("group_create", group=name)


@operation("group_release")
async def group_release(sup: OperationParts, args: dict[str, Any]) -> Result:
    name = args["group"]
    if name not in sup.state.topology.groups:
        return Status(Code.DOES_NOT_EXIST, f"Group {name} does not exist"), None
    changes = sup.state.forget_group(name)
    sup.state.topology.release_group(name)
    guest_changes, guests = await sup.apply_guests()  # its patterns' interfaces go too
    return await sup.commit("group_release", changes + guest_changes, group=name, **guests)


@operation("add")
async def add(sup: OperationParts, args: dict[str, Any]) -> Result:
    name, group = args["interface"], args["group"]
    upstream = args.get("upstream", False)
    if is_pattern(name):
        return await _add_pattern(sup, name, group, upstream)
    status = sup.state.topology.add_to_group(name, group, upstream=upstream)
    if not status:
        return status.wrap(f"Failed to add {name} to group {group}"), None
    return await sup.commit("add", interface=name, group=group, upstream=upstream)


async def _add_pattern(sup: OperationParts, pattern: str, group: str, upstream: bool) -> Result:
    if upstream:
        status = Status(Code.INVALID_ARGUMENT, "An upstream is an exact interface name")
    else:
        status = sup.state.topology.add_pattern(pattern, group)
    if not status:
        return status.wrap(f"Failed to add pattern {pattern} to group {group}"), None
    changes, guests = await sup.apply_guests()
    status, _ = await sup.commit("add", changes, pattern=pattern, group=group, **guests)
    return status, {"bound": [name for name, _, _ in guests.get("bound", [])]}


@operation("remove")
async def remove(sup: OperationParts, args: dict[str, Any]) -> Result:
    name = args["interface"]
    if is_pattern(name):
        status = sup.state.topology.remove_pattern(name)
        if not status:
            return status.wrap(f"Failed to remove pattern {name}"), None
        changes, guests = await sup.apply_guests()
        status, _ = await sup.commit("remove", changes, pattern=name, **guests)
        return status, {"released": guests.get("released", [])}
    interface = sup.state.topology.interfaces.get(name)
    if interface is None:
        return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound"), None
    if interface.group is None:
        return Status(
            Code.NO_OPERATION, f"Interface {name} is in no group; nothing to remove"
        ), None
    changes = sup.state.forget_interface(name)
    sup.state.topology.remove_from_group(name)
    return await sup.commit("remove", changes, interface=name)


@operation("upstream_set")
async def upstream_set(sup: OperationParts, args: dict[str, Any]) -> Result:
    name = args["interface"]
    interface = sup.state.topology.interfaces.get(name)
    if interface is None:
        return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound"), None
    if interface.group is None:
        return Status(
            Code.FAILED_PRECONDITION,
            f"Interface {name} is in no group; add it to one first (portierctl add)",
        ), None
    sup.state.topology.set_upstream(name)
    return await sup.commit("upstream_set", interface=name, group=interface.group)


@operation("upstream_unset")
async def upstream_unset(sup: OperationParts, args: dict[str, Any]) -> Result:
    name = args["group"]
    status = sup.state.topology.unset_upstream(name)
    if not status:
        return status, None
    return await sup.commit("upstream_unset", group=name)


# --- operators' additions --------------------------------------------------------------


@operation("enable")
async def enable(sup: OperationParts, args: dict[str, Any]) -> Result:
    name = args["interface"]
    status = sup.state.topology.enable(name)
    if status.code == Code.NO_OPERATION:
        reasons = sorted(r.value for r in sup.state.topology.interfaces[name].disable_reasons)
        detail = f"; still disabled by: {', '.join(reasons)}" if reasons else ""
        return Status(Code.NO_OPERATION, status.message + detail), None
    if not status:
        return status, None
    return await sup.commit("enable", interface=name)


@operation("flush")
async def flush(sup: OperationParts, args: dict[str, Any]) -> Result:
    group = args.get("group")
    if group is not None:
        status = check_group_name(group)
        if status and group not in sup.state.topology.groups:
            status = Status(Code.DOES_NOT_EXIST, f"Group {group} does not exist")
        if not status:
            return status, None
    changes, count = sup.state.flush(group)
    status, _ = await sup.commit("flush", changes, group=group, flushed=count)
    return status, {"flushed": count}


@operation("nested")
async def nested(sup: OperationParts, args: dict[str, Any]) -> Result:
    enabled = args["enabled"]
    if sup.state.topology.nested == enabled:
        return Status(
            Code.NO_OPERATION, f"Nested mode is already {'on' if enabled else 'off'}"
        ), None
    sup.state.topology.nested = enabled
    return await sup.commit("nested", enabled=enabled)


@operation("fastpath")
async def fastpath(sup: OperationParts, args: dict[str, Any]) -> Result:
    drift = None
    if args.get("check"):
        drift = await sup.fastpath.check(sup.state.topology, sup.state.neighbors, time.monotonic())
    return OK, {**sup.fastpath.view(), "drift": drift}


@operation("reload")
async def reload(sup: OperationParts, args: dict[str, Any]) -> Result:
    return await sup.reload()
