"""portierd: the supervisor.  Loads the configuration, owns the state, runs the workers.

The asyncio loop here is the only writer of state.  It wires the parts together: the
worker channel (a ROUTER socket; each worker's routing id is its interface name), the
worker pool, the authoritative state and its replication, the control socket and the
event stream, persistence, reload, sd_notify and the timers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth

from portier import __version__, logs, schema
from portier.config import DEFAULT_PATH, Config, ConfigError, load_config
from portier.replication import snapshot_to_wire
from portier.schema import SchemaError
from portier.status import OK, Code, Status
from portier.supervisor import operations
from portier.supervisor.access import (
    DOMAIN,
    ZapHandler,
    group_id,
    load_authorized_keys,
    secure_socket_file,
)
from portier.supervisor.control import TRANSPORT_MAX_BYTES, ControlServer
from portier.supervisor.events import EventPublisher
from portier.supervisor.fastpath import FastPath
from portier.supervisor.metrics import MetricsServer
from portier.supervisor.persistence import load_state, save_state, write_atomically
from portier.supervisor.reload import ReloadPlan, plan_reload
from portier.supervisor.sdnotify import Notifier, watchdog_interval_s
from portier.supervisor.state import Change, ProxyState
from portier.supervisor.views import status_view
from portier.supervisor.workerpool import WorkerHandle, WorkerPool, WorkerState

log = logging.getLogger("portier.supervisor")

TICK_S = 0.5
HEARTBEAT_S = 1.0
NEIGHBOR_SAVE_S = 2.0
WORKERS_SOCKET = "workers.sock"
EVENTS_SOCKET = "events.sock"
STATUS_FILE = "status.json"
FASTPATH_CHECK_S = 10.0
# Settings a reload cannot change in a running daemon.
RESTART_SETTINGS = (
    "runtime_dir",
    "state_dir",
    "control_group",
    "metrics_listen",
    "neighbor_capacity",
    "neighbor_lifetime_seconds",
    "control_socket",
    "control_tcp",
    "curve_secret_key",
    "curve_authorized_keys",
)


def config_snapshot(config: Config) -> dict[str, Any]:
    """What of the configuration the running state was built from (see reload.py)."""
    return {
        "groups": config.groups_wire(),
        "nested": config.nested,
        "loop_disable_seconds": config.loop_disable_seconds,
    }


@dataclasses.dataclass
class SupervisorStats:
    """Totals the supervisor counts itself, for the metrics."""

    learned: Counter[str] = dataclasses.field(default_factory=Counter)  # by group
    expired: Counter[str] = dataclasses.field(default_factory=Counter)  # by group
    loops: Counter[str] = dataclasses.field(default_factory=Counter)  # by interface


class Supervisor:
    def __init__(
        self, config: Config, *, config_path: Path | None = None, log_level: str = "info"
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.applied = config_snapshot(config)
        self.runtime_dir = config.runtime_dir
        self.state = ProxyState(config)
        self.context = zmq.asyncio.Context()
        self.workers_path = self.runtime_dir / WORKERS_SOCKET
        self.channel = self.context.socket(zmq.ROUTER)
        self.pool = WorkerPool(
            f"ipc://{self.workers_path}",
            worker_args=[
                "--neighbor-capacity",
                str(config.neighbor_capacity),
                "--neighbor-lifetime",
                str(config.neighbor_lifetime_seconds),
                "--log-level",
                log_level,
            ],
            on_state=self._on_worker_state,
        )
        self.stop_event = asyncio.Event()
        self.notifier = Notifier()
        self.ready = False
        self.last_status = ""
        self.watchdog_s = watchdog_interval_s()
        self.started_at = time.monotonic()
        self.neighbors_dirty = False
        self.saved_at = 0.0
        self.control_servers: list[ControlServer] = []
        self.events: EventPublisher | None = None
        self.zap: ZapHandler | None = None
        self.sockets: list[zmq.asyncio.Socket] = []
        self.tasks: set[asyncio.Future[Any]] = set()
        self.stats = SupervisorStats()
        self.fastpath = FastPath(enabled=config.fastpath_enabled)
        self.fastpath_dirty = False
        self.fastpath_packets = 0
        self.metrics = MetricsServer(self)

    # --- start and stop ----------------------------------------------------------------

    def restore(self) -> None:
        """Come back as we were: the state file, then the configuration's edits since."""
        restored = load_state(self.config.state_dir, self.state.topology, self.state.neighbors)
        if restored is None:
            status = self.state.apply_config_groups(self.config)
            if not status:
                raise ConfigError(self.config.source, "group", status.text())
            return
        log.info(
            "state restored from %s: %d neighbors back, %d aged out",
            self.config.state_dir,
            restored.neighbors_restored,
            restored.neighbors_aged_out,
        )
        self._apply_config_diff(restored.config, config_snapshot(self.config))

    async def run(self) -> int:
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.restore()
        self._bind_sockets()
        await self.fastpath.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_event.set)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_status)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.background(self.reload()))
        try:
            await self.metrics.start(self.config.metrics_listen)
        except OSError as exc:
            log.error("metrics endpoint %s unavailable: %s", self.config.metrics_listen, exc)
        for name in self.state.topology.interfaces:
            await self.pool.start(name)
        self.persist()
        log.info(
            "portierd %s running: %d groups, %d interfaces, control at %s",
            __version__,
            len(self.state.topology.groups),
            len(self.state.topology.interfaces),
            self.config.control_path,
        )
        assert self.zap is not None
        tasks = [
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._tick()),
            asyncio.create_task(self.zap.serve()),
            *(asyncio.create_task(server.serve()) for server in self.control_servers),
        ]
        await self.stop_event.wait()
        log.info("stopping")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.shutdown()
        return 0

    def _bind_sockets(self) -> None:
        gid = group_id(self.config.control_group)
        if gid is None:
            log.warning(
                "control group %s does not exist: only root may use the control socket",
                self.config.control_group,
            )
        authorized = (
            load_authorized_keys(self.config.curve_authorized_keys)
            if self.config.curve_authorized_keys
            else set()
        )
        self.zap = ZapHandler(self.context, gid, authorized)
        self.channel.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.channel.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.channel.setsockopt(zmq.LINGER, 0)
        self._bind_ipc(self.channel, self.workers_path, None)

        control = self.context.socket(zmq.ROUTER)
        control.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_MAX_BYTES)
        control.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
        self._bind_ipc(control, self.config.control_path, gid)
        if self.config.control_tcp:
            assert self.config.curve_secret_key is not None
            public, secret = zmq.auth.load_certificate(str(self.config.curve_secret_key))
            tcp = self.context.socket(zmq.ROUTER)
            tcp.setsockopt(zmq.LINGER, 0)
            tcp.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_MAX_BYTES)
            tcp.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
            tcp.curve_server = True
            tcp.curve_publickey, tcp.curve_secretkey = public, secret
            tcp.bind(self.config.control_tcp)
            self.sockets.append(tcp)
            log.info("control also on %s (CURVE)", self.config.control_tcp)
        self.control_servers = [
            ControlServer(sock, self.dispatch) for sock in [control, *self.sockets]
        ]

        events = self.context.socket(zmq.PUB)
        events.setsockopt(zmq.LINGER, 0)
        events.setsockopt(zmq.SNDHWM, 10_000)
        events.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
        self._bind_ipc(events, self.runtime_dir / EVENTS_SOCKET, gid)
        self.events = EventPublisher(events)
        self.sockets.extend([control, events])

    def _bind_ipc(self, sock: zmq.asyncio.Socket, path: Path, gid: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a daemon that was killed
        sock.bind(f"ipc://{path}")
        secure_socket_file(path, gid)

    async def shutdown(self) -> None:
        self.notifier.stopping()
        for handle in self.pool.handles.values():
            if handle.connected:
                await self._send(handle.interface, {"kind": "command", "command": "stop"})
        await self.pool.stop_all(timeout_s=3.0)
        self.persist()
        await self.fastpath.remove()
        self.metrics.close()
        if self.zap is not None:
            self.zap.close()
        for sock in [self.channel, *self.sockets]:
            sock.close(linger=0)
        self.context.term()
        for path in (
            self.workers_path,
            self.config.control_path,
            self.runtime_dir / EVENTS_SOCKET,
            self.runtime_dir / STATUS_FILE,
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.notifier.close()

    # --- state changes ---------------------------------------------------------------------

    def persist(self) -> None:
        try:
            save_state(
                self.config.state_dir, self.state.topology, self.state.neighbors, self.applied
            )
        except OSError as exc:
            log.error("cannot write state to %s: %s", self.config.state_dir, exc)
            return
        self.neighbors_dirty = False
        self.saved_at = time.monotonic()

    async def committed(self, op: str, changes: list[Change] | None = None, **fields: Any) -> None:
        """After an operation changed state: replicate it, persist it, announce it."""
        await self.broadcast([*(changes or []), *self.state.topology_changed()])
        await self.sync_fastpath()
        self.persist()
        self.publish("state", op=op, **fields)
        self._check_ready()

    async def sync_fastpath(self) -> None:
        self.fastpath_dirty = False
        await self.fastpath.sync(self.state.topology, self.state.neighbors, time.monotonic())

    async def check_fastpath(self) -> int:
        """The periodic consistency check, and the kernel's forwarding count."""
        now = time.monotonic()
        drift = await self.fastpath.check(self.state.topology, self.state.neighbors, now)
        self.fastpath_packets = await self.fastpath.packets()
        return drift

    def publish(self, kind: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.publish(kind, **fields)

    async def start_worker(self, name: str) -> None:
        await self.pool.start(name)

    def stop_worker(self, name: str) -> None:
        """Stop in the background: the reply need not wait for the process to exit."""
        self.background(self.pool.stop(name))

    def background(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def reload(self) -> tuple[Status, Any]:
        if self.config_path is None:
            return Status(Code.FAILED_PRECONDITION, "portierd was started without a file"), None
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
            return Status(Code.INVALID_ARGUMENT, str(exc)).wrap(
                "Configuration rejected; the running state is unchanged"
            ), None
        plan, changes = self._apply_config_diff(self.applied, config_snapshot(new))
        needs_restart = [
            key for key in RESTART_SETTINGS if getattr(new, key) != getattr(self.config, key)
        ]
        self.config = dataclasses.replace(
            new, **{k: getattr(self.config, k) for k in needs_restart}
        )
        for name in plan.bind_interfaces:
            await self.pool.start(name)
        for name in plan.release_interfaces:
            self.stop_worker(name)
        await self.committed("reload", changes, **plan.summary())
        log.info(
            "configuration reloaded from %s: %s", self.config_path, plan.summary() or "no change"
        )
        result = {"changes": plan.summary(), "needs_restart": needs_restart}
        return OK, result

    def _apply_config_diff(
        self, previous: dict[str, Any], current: dict[str, Any]
    ) -> tuple[ReloadPlan, list[Change]]:
        """Change the topology from what `previous` configured to what `current` does."""
        topology = self.state.topology
        plan = plan_reload(topology, previous.get("groups", []), current["groups"])
        changes: list[Change] = []
        for group in plan.release_groups:
            changes += self.state.forget_group(group)
            topology.release_group(group)
        for name in plan.release_interfaces:
            changes += self.state.forget_interface(name)
            topology.release(name)
        for group in plan.create_groups:
            topology.create_group(group)
        for name in plan.bind_interfaces:
            topology.bind(name)
        for name, group, upstream in plan.memberships:
            interface = topology.interfaces[name]
            if interface.group != group:
                if interface.group is not None:
                    changes += self.state.forget_interface(name)
                    topology.remove_from_group(name)
                topology.add_to_group(name, group, upstream=upstream)
            elif upstream:
                topology.set_upstream(name)
            elif topology.groups[group].upstream == name:
                topology.unset_upstream(group)
        for group in plan.unset_upstreams:
            topology.unset_upstream(group)
        for key, attribute in (("nested", "nested"), ("loop_disable_seconds", "loop_disable_s")):
            if previous.get(key) != current[key]:
                setattr(topology, attribute, current[key])
        self.applied = current
        return plan, changes

    # --- control ----------------------------------------------------------------------------

    async def dispatch(self, op: str, args: dict[str, Any]) -> tuple[Status, Any, str | None]:
        status, result = await operations.OPERATIONS[op](self, args)
        return status, result, operations.outcome(op, status)

    def summary(self) -> dict[str, Any]:
        topology = self.state.topology
        workers: dict[str, int] = {}
        totals = {"received": 0, "forwarded": 0, "dropped": 0}
        for handle in self.pool.handles.values():
            workers[handle.state.value] = workers.get(handle.state.value, 0) + 1
            counters = handle.counters
            totals["received"] += counters.get("rx_nd", 0) + counters.get("rx_data", 0)
            totals["forwarded"] += sum(v for k, v in counters.items() if k.startswith("tx|"))
            totals["dropped"] += sum(handle.drops.values())
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "ready": self.ready,
            "nested": topology.nested,
            "loop_disable_s": topology.loop_disable_s,
            "groups": len(topology.groups),
            "interfaces": len(topology.interfaces),
            "forwarding": sum(1 for i in topology.interfaces.values() if i.enabled),
            "disabled": {
                i.name: sorted(r.value for r in i.disable_reasons)
                for i in topology.interfaces.values()
                if not i.enabled
            },
            "neighbors": len(self.state.neighbors),
            "workers": workers,
            "frames": totals,
            "fastpath": {**self.fastpath.view(), "kernel_packets": self.fastpath_packets},
            "config": str(self.config_path) if self.config_path else None,
            "state_dir": str(self.config.state_dir),
        }

    def dump_status(self) -> None:
        """SIGUSR1: write the whole state, readable, to status.json in the runtime dir."""
        view = status_view(self.state.topology, self.state.neighbors, self.pool)
        path = self.runtime_dir / STATUS_FILE
        try:
            write_atomically(path, json.dumps(view, indent=1, default=str).encode())
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc)
        else:
            log.info("status written to %s", path)

    def _check_ready(self) -> None:
        """READY=1 once every bound interface's worker has its snapshot."""
        handles = self.pool.handles.values()
        connected = sum(1 for h in handles if h.connected)
        summary = f"{connected}/{len(self.pool.handles)} workers forwarding"
        if not self.ready and connected == len(self.pool.handles):
            self.ready = True
            self.notifier.ready(summary)
            log.info("ready: %s", summary)
        elif self.ready and summary != self.last_status:
            self.notifier.status(summary)
        self.last_status = summary

    # --- the worker channel ---------------------------------------------------------------

    async def _send(self, interface: str, message: dict[str, Any]) -> bool:
        try:
            await self.channel.send_multipart([interface.encode(), schema.encode(message)])
        except zmq.ZMQError as exc:
            log.debug("cannot send to worker %s: %s", interface, exc)
            return False
        return True

    async def _send_snapshot(self, handle: WorkerHandle) -> None:
        handle.seq = 0
        state = snapshot_to_wire(self.state.topology, self.state.neighbors)
        await self._send(handle.interface, {"kind": "snapshot", "seq": 0, "state": state})

    async def broadcast(self, changes: list[Change], exclude: str | None = None) -> None:
        if not changes:
            return
        for handle in list(self.pool.handles.values()):
            if not handle.connected or handle.interface == exclude:
                continue
            handle.seq += 1
            await self._send(
                handle.interface, {"kind": "delta", "seq": handle.seq, "changes": changes}
            )

    async def _receive(self) -> None:
        while True:
            frames = await self.channel.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                interface = frames[0].decode()
                message = schema.decode_worker(frames[1])
            except (UnicodeDecodeError, SchemaError) as exc:
                log.warning("bad message on the worker channel: %s", exc)
                continue
            try:
                await self._on_worker_message(interface, message)
            except (SchemaError, KeyError, TypeError, ValueError) as exc:
                log.warning("bad %s from worker %s: %s", message.get("kind"), interface, exc)

    async def _on_worker_message(self, interface: str, message: dict[str, Any]) -> None:
        handle = self.pool.heard_from(interface)
        if handle is None or interface not in self.state.topology.interfaces:
            return
        kind = message["kind"]
        now = time.monotonic()
        if kind == "hello":
            if message["interface"] != interface:
                return
            handle.pid = message["pid"]
            self.pool.mark_running(handle)
            changes = self.state.on_link(interface, message)
            await self._send_snapshot(handle)
            await self.broadcast(changes, exclude=interface)
            self._check_ready()
        elif kind == "heartbeat":
            handle.counters = message.get("counters", {})
            handle.drops = message.get("drops", {})
            handle.histograms = message.get("histograms", {})
        elif kind == "resync":
            await self._send_snapshot(handle)
        elif kind == "learned":
            changes, accepted = self.state.on_learned(interface, message["neighbors"])
            if accepted:
                self.neighbors_dirty = True
                self.fastpath_dirty = True
                await self.broadcast(changes, exclude=interface)
                for entry in accepted:
                    self.stats.learned[entry.group] += 1
                    self.publish(
                        "neighbor",
                        change="learned",
                        group=entry.group,
                        address=entry.address,
                        interface=entry.interface,
                        mac=entry.mac,
                        router=entry.is_router,
                    )
        elif kind == "link":
            await self.broadcast(self.state.on_link(interface, message))
            await self.sync_fastpath()  # a re-created interface has a new ifindex
            self.publish(
                "state",
                op="link",
                interface=interface,
                up=message["up"],
                ifindex=message["ifindex"],
            )
        elif kind == "loop":
            if message["interface"] == interface:
                log.warning(
                    "loop detected on %s; disabled for %.0f s",
                    interface,
                    self.state.topology.loop_disable_s,
                )
                changes = self.state.on_loop(interface, message["group"], now)
                if changes:
                    self.stats.loops[interface] += 1
                    await self.broadcast(changes)
                    await self.sync_fastpath()  # stop forwarding to it at once
                    self.persist()
                    self.publish(
                        "loop",
                        interface=interface,
                        group=message["group"],
                        disabled_for_s=self.state.topology.loop_disable_s,
                    )
        elif kind == "prefix":
            self.fastpath_dirty = True
            await self.broadcast(
                self.state.on_prefix(
                    interface,
                    message["group"],
                    bytes(message["prefix"]),
                    message["length"],
                    message["valid_until"],
                ),
                exclude=interface,
            )

    def _on_worker_state(self, handle: WorkerHandle) -> None:
        log.info("worker %s: %s", handle.interface, handle.state.value)
        self.publish(
            "worker",
            interface=handle.interface,
            state=handle.state.value,
            pid=handle.pid,
            restarts=handle.restarts,
        )
        if self.ready:
            self._check_ready()

    # --- timers ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        next_heartbeat = next_watchdog = 0.0
        next_check = time.monotonic() + FASTPATH_CHECK_S
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if self.watchdog_s is not None and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + self.watchdog_s
            changes = self.state.expire(now)
            if changes:
                self.neighbors_dirty = True
                await self.broadcast(changes)
                for change in changes:
                    if change["op"] == "neighbor_removed":
                        self.stats.expired[change["group"]] += 1
                        self.publish(
                            "neighbor",
                            change="expired",
                            group=change["group"],
                            address=change["address"],
                        )
                self.fastpath_dirty = True
            if self.fastpath_dirty:
                await self.sync_fastpath()
            if self.fastpath.active and now >= next_check:
                next_check = now + FASTPATH_CHECK_S
                await self.check_fastpath()
            if self.neighbors_dirty and now - self.saved_at >= NEIGHBOR_SAVE_S:
                self.persist()
            self.pool.check_heartbeats(now)
            if now >= next_heartbeat:
                next_heartbeat = now + HEARTBEAT_S
                for handle in self.pool.handles.values():
                    if handle.state == WorkerState.RUNNING:
                        await self._send(handle.interface, {"kind": "heartbeat"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portierd", description="Portier ND proxy daemon")
    parser.add_argument("--config", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--runtime-dir", type=Path)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    logs.configure("portierd", args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"portierd: invalid configuration: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    if args.runtime_dir:
        overrides["runtime_dir"] = args.runtime_dir
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    if overrides:
        config = dataclasses.replace(config, **overrides)
    faulthandler.register(signal.SIGUSR2)  # stack dump for debugging a stuck daemon
    supervisor = Supervisor(config, config_path=args.config, log_level=args.log_level)
    try:
        return asyncio.run(supervisor.run())
    except ConfigError as exc:
        print(f"portierd: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
