"""Control operations: one small function per operation, from arguments to a reply.

Arguments arrive already checked against the schema's field types; each function checks
their values, changes state only through the supervisor, and returns a Status plus a
result.  `OUTCOMES` maps the original Portier's eight operations onto its outcome names
(SUCCESS, EXISTS, DOES_NOT_EXIST, NO_OPERATION, FAILED, ...), which replies carry too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portier.groups import check_group_name, check_interface_name
from portier.status import OK, Code, Status
from portier.supervisor import views

if TYPE_CHECKING:
    from portier.supervisor.main import Supervisor

Result = tuple[Status, Any]
Operation = Callable[["Supervisor", dict[str, Any]], Awaitable[Result]]
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
async def status(sup: Supervisor, args: dict[str, Any]) -> Result:
    return OK, sup.summary()


@operation("groups")
async def groups(sup: Supervisor, args: dict[str, Any]) -> Result:
    return OK, views.groups_view(sup.state.topology)


@operation("interfaces")
async def interfaces(sup: Supervisor, args: dict[str, Any]) -> Result:
    return OK, views.interfaces_view(sup.state.topology, time.monotonic())


@operation("neighbors")
async def neighbors(sup: Supervisor, args: dict[str, Any]) -> Result:
    group = args.get("group")
    if group is not None and group not in sup.state.topology.groups:
        return Status(Code.DOES_NOT_EXIST, f"Group {group} does not exist"), None
    return OK, views.neighbors_view(sup.state.neighbors, time.monotonic(), group)


@operation("workers")
async def workers(sup: Supervisor, args: dict[str, Any]) -> Result:
    return OK, views.workers_view(sup.pool)


# --- the original API ------------------------------------------------------------------


@operation("bind")
async def bind(sup: Supervisor, args: dict[str, Any]) -> Result:
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
    await sup.start_worker(name)
    await sup.committed("bind", interface=name)
    return OK, None


@operation("release")
async def release(sup: Supervisor, args: dict[str, Any]) -> Result:
    name = args["interface"]
    if name not in sup.state.topology.interfaces:
        return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound"), None
    changes = sup.state.forget_interface(name)
    sup.state.topology.release(name)
    sup.stop_worker(name)
    await sup.committed("release", changes, interface=name)
    return OK, None


@operation("group_create")
async def group_create(sup: Supervisor, args: dict[str, Any]) -> Result:
    name = args["group"]
    status = sup.state.topology.create_group(name)
    if not status:
        return status.wrap(f"Failed to create group {name}"), None
    await sup.committed("group_create", group=name)
    return OK, None


@operation("group_release")
async def group_release(sup: Supervisor, args: dict[str, Any]) -> Result:
    name = args["group"]
    if name not in sup.state.topology.groups:
        return Status(Code.DOES_NOT_EXIST, f"Group {name} does not exist"), None
    changes = sup.state.forget_group(name)
    sup.state.topology.release_group(name)
    await sup.committed("group_release", changes, group=name)
    return OK, None


@operation("add")
async def add(sup: Supervisor, args: dict[str, Any]) -> Result:
    name, group = args["interface"], args["group"]
    upstream = args.get("upstream", False)
    status = sup.state.topology.add_to_group(name, group, upstream=upstream)
    if not status:
        return status.wrap(f"Failed to add {name} to group {group}"), None
    await sup.committed("add", interface=name, group=group, upstream=upstream)
    return OK, None


@operation("remove")
async def remove(sup: Supervisor, args: dict[str, Any]) -> Result:
    name = args["interface"]
    interface = sup.state.topology.interfaces.get(name)
    if interface is None:
        return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound"), None
    if interface.group is None:
        return Status(
            Code.NO_OPERATION, f"Interface {name} is in no group; nothing to remove"
        ), None
    changes = sup.state.forget_interface(name)
    sup.state.topology.remove_from_group(name)
    await sup.committed("remove", changes, interface=name)
    return OK, None


@operation("upstream_set")
async def upstream_set(sup: Supervisor, args: dict[str, Any]) -> Result:
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
    await sup.committed("upstream_set", interface=name, group=interface.group)
    return OK, None


@operation("upstream_unset")
async def upstream_unset(sup: Supervisor, args: dict[str, Any]) -> Result:
    name = args["group"]
    status = sup.state.topology.unset_upstream(name)
    if not status:
        return status, None
    await sup.committed("upstream_unset", group=name)
    return OK, None


# --- operators' additions --------------------------------------------------------------


@operation("enable")
async def enable(sup: Supervisor, args: dict[str, Any]) -> Result:
    name = args["interface"]
    status = sup.state.topology.enable(name)
    if status.code == Code.NO_OPERATION:
        reasons = sorted(r.value for r in sup.state.topology.interfaces[name].disable_reasons)
        detail = f"; still disabled by: {', '.join(reasons)}" if reasons else ""
        return Status(Code.NO_OPERATION, status.message + detail), None
    if not status:
        return status, None
    await sup.committed("enable", interface=name)
    return OK, None


@operation("flush")
async def flush(sup: Supervisor, args: dict[str, Any]) -> Result:
    group = args.get("group")
    if group is not None:
        status = check_group_name(group)
        if status and group not in sup.state.topology.groups:
            status = Status(Code.DOES_NOT_EXIST, f"Group {group} does not exist")
        if not status:
            return status, None
    changes, count = sup.state.flush(group)
    await sup.committed("flush", changes, group=group, flushed=count)
    return OK, {"flushed": count}


@operation("nested")
async def nested(sup: Supervisor, args: dict[str, Any]) -> Result:
    enabled = args["enabled"]
    if sup.state.topology.nested == enabled:
        return Status(
            Code.NO_OPERATION, f"Nested mode is already {'on' if enabled else 'off'}"
        ), None
    sup.state.topology.nested = enabled
    await sup.committed("nested", enabled=enabled)
    return OK, None


@operation("fastpath")
async def fastpath(sup: Supervisor, args: dict[str, Any]) -> Result:
    drift = await sup.check_fastpath() if args.get("check") else None
    return OK, {**sup.fastpath.view(), "kernel_packets": sup.fastpath_packets, "drift": drift}


@operation("reload")
async def reload(sup: Supervisor, args: dict[str, Any]) -> Result:
    return await sup.reload()
