"""portierctl: drive portierd from a shell.

Tables for people by default, `--json` for scripts (one JSON document per reply, one
per line for `watch`).  Exit status 0 on success; on failure 1 with the status code's
name and the chained message on stderr (3 when portierd cannot be reached at all).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import sys
from typing import Any

import zmq.auth

from portier.control import (
    DEFAULT_SOCKET,
    DEFAULT_TIMEOUT_S,
    ControlClient,
    ControlError,
    Curve,
    watch,
)
from portier.status import Code, Status

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3
_UNREACHABLE = {Code.RESULT_UNAVAILABLE, Code.TIMEOUT, Code.BAD_PERMISSIONS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portierctl", description="Control portierd.")
    parser.add_argument(
        "--socket",
        default=os.environ.get("PORTIER_SOCKET", DEFAULT_SOCKET),
        help=f"control socket (default {DEFAULT_SOCKET})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS")
    parser.add_argument(
        "--server-key",
        metavar="FILE",
        help="for tcp:// sockets: the daemon's public certificate (CURVE)",
    )
    parser.add_argument(
        "--key", metavar="FILE", help="for tcp:// sockets: this client's secret certificate (CURVE)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("status", "daemon summary"),
        ("groups", "proxy groups"),
        ("interfaces", "bound interfaces and why any is disabled"),
        ("workers", "worker processes"),
        ("reload", "re-read the configuration file"),
    ):
        commands.add_parser(name, help=help_text)
    neighbors = commands.add_parser("neighbors", help="learned neighbors")
    neighbors.add_argument("--group")
    for name in ("bind", "release", "remove", "enable"):
        commands.add_parser(name, help=f"{name} an interface").add_argument("interface")
    group = commands.add_parser("group", help="create or release a group")
    group.add_argument("action", choices=["create", "release"])
    group.add_argument("group")
    add = commands.add_parser("add", help="add an interface or a name pattern to a group")
    add.add_argument("interface", metavar="IF|PATTERN")
    add.add_argument("group")
    add.add_argument("--upstream", action="store_true")
    upstream = commands.add_parser("upstream", help="set IF or unset GROUP as upstream")
    upstream.add_argument("action", choices=["set", "unset"])
    upstream.add_argument("name", metavar="IF|GROUP")
    flush = commands.add_parser("flush", help="forget learned neighbors")
    flush.add_argument("--group")
    nested = commands.add_parser("nested", help="nested mode (accept proxied RAs upstream)")
    nested.add_argument("state", choices=["on", "off"])
    commands.add_parser("watch", help="stream events until interrupted")
    fast = commands.add_parser("fastpath", help="kernel fast path state and counts")
    fast.add_argument("--check", action="store_true", help="compare with the kernel now")
    return parser


def request_for(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    command = args.command
    if command in ("status", "groups", "interfaces", "workers", "reload"):
        return command, {}
    if command == "neighbors":
        return "neighbors", {"group": args.group}
    if command in ("bind", "release", "remove", "enable"):
        return command, {"interface": args.interface}
    if command == "group":
        return f"group_{args.action}", {"group": args.group}
    if command == "add":
        return "add", {
            "interface": args.interface,
            "group": args.group,
            "upstream": True if args.upstream else None,
        }
    if command == "upstream":
        if args.action == "set":
            return "upstream_set", {"interface": args.name}
        return "upstream_unset", {"group": args.name}
    if command == "flush":
        return "flush", {"group": args.group}
    if command == "fastpath":
        return "fastpath", {"check": True if args.check else None}
    return "nested", {"enabled": args.state == "on"}


# --- human-readable output ---------------------------------------------------------------


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(title), *(len(r[i]) for r in cells)) for i, (_, title) in enumerate(columns)]
    lines = [
        "  ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True)).rstrip()
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def local_time(wall: float) -> str:
    """A wall-clock stamp as local ISO-8601 to the second, with the UTC offset."""
    return datetime.datetime.fromtimestamp(wall).astimezone().isoformat(timespec="seconds")


def fastpath_line(fastpath: dict[str, Any]) -> str:
    fallback = f"; {fastpath['fallback']}" if fastpath.get("fallback") else ""
    if not fastpath.get("active"):
        reason = fastpath.get("reason") or "not running"
        retry = fastpath.get("retry_in_s")
        retrying = f", retrying in {retry:.0f} s" if retry is not None else ""
        return f"fast path off ({reason}){retrying}{fallback}"
    return (
        f"fast path on ({fastpath.get('engine', 'nftables')}):"
        f" {fastpath.get('neighbors', 0)} neighbors,"
        f" {fastpath.get('kernel_packets', 0)} frames in the kernel{fallback}"
    )


def state_save_line(state_save: dict[str, Any]) -> str | None:
    """`state not saved since TIME: ERROR` while saving fails, else nothing."""
    error = state_save.get("error")
    if not error:
        return None
    since = state_save.get("failing_since")
    when = local_time(since) if since is not None else "start"
    return f"state not saved since {when}: {error}"


def readiness_word(result: dict[str, Any]) -> str:
    if result["ready"]:
        return "ready"
    loops = (result.get("health") or {}).get("loops") or {}
    return (
        "not ready" if any(not loop.get("healthy", True) for loop in loops.values()) else "starting"
    )


def health_lines(health: dict[str, Any]) -> list[str]:
    lines = []
    for name, loop in sorted((health.get("loops") or {}).items()):
        if not loop.get("healthy", True):
            error = f", last error: {loop['last_error']}" if loop.get("last_error") else ""
            lines.append(
                f"unhealthy: supervisor loop {name} ({loop.get('restarts', 0)} restarts{error})"
            )
    return lines


def render(command: str, result: Any) -> str:
    if command == "status":
        frames = result.get("frames", {})
        workers = ", ".join(f"{n} {state}" for state, n in sorted(result["workers"].items()))
        lines = [
            f"portierd {result['version']} (pid {result['pid']}), up {result['uptime_s']} s,"
            f" {readiness_word(result)}",
            f"groups {result['groups']}, interfaces {result['interfaces']}"
            f" ({result['forwarding']} forwarding), neighbors {result['neighbors']}",
            f"workers: {workers or 'none'}",
            f"frames: received {frames.get('received', 0)}, forwarded"
            f" {frames.get('forwarded', 0)}, dropped {frames.get('dropped', 0)}",
            fastpath_line(result["fastpath"]),
            f"nested mode {'on' if result['nested'] else 'off'},"
            f" loop-disable {result['loop_disable_s']:g} s",
        ]
        saving = state_save_line(result.get("state_save") or {})
        if saving:
            lines.append(saving)
        lines.extend(health_lines(result.get("health") or {}))
        for name, reasons in sorted(result["disabled"].items()):
            lines.append(f"disabled: {name} ({', '.join(reasons)})")
        return "\n".join(lines)
    if command == "groups":
        return table(
            result,
            [
                ("name", "GROUP"),
                ("upstream", "UPSTREAM"),
                ("members", "MEMBERS"),
                ("patterns", "PATTERNS"),
                ("onlink_prefixes", "ON-LINK"),
            ],
        )
    if command == "interfaces":
        return table(
            result,
            [
                ("name", "INTERFACE"),
                ("group", "GROUP"),
                ("role", "ROLE"),
                ("bound_by", "BOUND BY"),
                ("forwarding", "FORWARDING"),
                ("disable_reasons", "DISABLED BY"),
                ("loop_disabled_for_s", "LOOP S"),
                ("mac", "MAC"),
                ("mtu", "MTU"),
            ],
        )
    if command == "neighbors":
        return table(
            result,
            [
                ("group", "GROUP"),
                ("address", "ADDRESS"),
                ("interface", "INTERFACE"),
                ("mac", "MAC"),
                ("state", "STATE"),
                ("router", "ROUTER"),
                ("idle_s", "IDLE S"),
                ("owner", "OWNER"),
                ("claimant", "CLAIMED BY"),
            ],
        )
    if command == "workers":
        return table(
            result,
            [
                ("interface", "INTERFACE"),
                ("state", "STATE"),
                ("pid", "PID"),
                ("restarts", "RESTARTS"),
                ("last_exit", "LAST EXIT"),
            ],
        )
    if command == "flush":
        return f"flushed {result['flushed']} neighbors"
    if command == "fastpath":
        engine = result.get("engine", "nftables")
        reason = result["reason"] or "not running"
        state = f"on ({engine})" if result["active"] else f"off ({reason})"
        text = (
            f"fast path {state}: {result['members']} members, {result['neighbors']}"
            f" neighbors in the kernel, {result['kernel_packets']} frames forwarded there\n"
        )
        if engine == "bpf":
            text += (
                f"map updates {result['updates']}, attaches {result['attaches']},"
                f" repairs {result['repairs']}, NS answered in the kernel {result['answered']}"
            )
        else:
            text += (
                f"transactions {result['transactions']}, failures {result['failures']},"
                f" rebuilds {result['rebuilds']}, repairs {result['repairs']}"
            )
        if result.get("fallback"):
            text += f"\nconfigured {result['configured_engine']}, not in use: {result['fallback']}"
        if result.get("drift") is not None:
            text += f"\ncheck: {result['drift']} differences found and repaired"
        return text
    if command == "reload":
        changes = result.get("changes") or {}
        text = "reloaded: " + (", ".join(f"{k} {v}" for k, v in changes.items()) or "no change")
        if result.get("needs_restart"):
            text += f"\nneeds a restart to apply: {', '.join(result['needs_restart'])}"
        for failure in result.get("failed") or []:
            text += f"\nfailed: {failure}"
        return text
    return "OK"


def event_line(event: dict[str, Any]) -> str:
    fields = []
    for key, value in event.items():
        if key in ("v", "kind", "time"):
            continue
        if isinstance(value, bytes):
            value = str(ipaddress.IPv6Address(value)) if len(value) == 16 else value.hex(":")
        fields.append(f"{key}={value}")
    return f"{event.get('kind', '?')}: {' '.join(fields)}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return str(ipaddress.IPv6Address(value)) if len(value) == 16 else value.hex(":")
    raise TypeError(type(value).__name__)


def load_curve(server_key: str | None, key: str | None) -> Curve | None:
    if server_key is None and key is None:
        return None
    if server_key is None or key is None:
        raise ControlError(Status(Code.INVALID_ARGUMENT, "--server-key and --key go together"))
    try:
        server_public, _ = zmq.auth.load_certificate(server_key)
        public, secret = zmq.auth.load_certificate(key)
    except (OSError, ValueError) as exc:
        raise ControlError(
            Status(Code.INVALID_ARGUMENT, f"cannot read CURVE keys: {exc}")
        ) from None
    if secret is None:
        raise ControlError(Status(Code.INVALID_ARGUMENT, f"{key} holds no secret key"))
    return Curve(server_public, public, secret)


def fail(status: Status) -> int:
    print(f"portierctl: {status}", file=sys.stderr)
    return EXIT_UNREACHABLE if status.code in _UNREACHABLE else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "watch":
        try:
            for event in watch(args.socket):
                if args.json:
                    print(json.dumps(event, default=_jsonable), flush=True)
                else:
                    print(event_line(event), flush=True)
        except ControlError as exc:
            return fail(exc.status)
        except KeyboardInterrupt:
            return 0
        return 0
    op, request_args = request_for(args)
    try:
        curve = load_curve(args.server_key, args.key)
        with ControlClient(args.socket, timeout_s=args.timeout, curve=curve) as client:
            reply = client.request(op, **request_args)
    except ControlError as exc:
        return fail(exc.status)
    if not reply.ok:
        return fail(reply.status)
    if reply.code == Code.OK and reply.message:
        # Applied, with something to know: e.g. the state could not be saved.
        print(f"portierctl: {reply.message}", file=sys.stderr)
    if args.json:
        document = {
            "ok": reply.ok,
            "code": Code(reply.code).name,
            "message": reply.message,
            "result": reply.result,
        }
        if reply.outcome:
            document["outcome"] = reply.outcome
        print(json.dumps(document, default=_jsonable))
    else:
        if reply.code == Code.NO_OPERATION:
            print(f"nothing to do: {reply.message}")
        else:
            print(render(args.command, reply.result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
