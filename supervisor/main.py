"""portierd: the supervisor.  Loads the configuration, owns the state, runs the workers.

The asyncio loop here is the only writer of state.  It wires the parts together: the
worker channel (a ROUTER socket; each worker's routing id is its interface name), the
worker pool, the authoritative state and its replication, and the timers.
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
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from portier import schema
from portier.config import DEFAULT_PATH, Config, ConfigError, load_config
from portier.replication import snapshot_to_wire
from portier.schema import SchemaError
from portier.supervisor.persistence import save_state, write_atomically
from portier.supervisor.sdnotify import Notifier, watchdog_interval_s
from portier.supervisor.state import Change, ProxyState
from portier.supervisor.views import status_view
from portier.supervisor.workerpool import WorkerHandle, WorkerPool, WorkerState

log = logging.getLogger("portier.supervisor")

TICK_S = 0.5
HEARTBEAT_S = 1.0
WORKERS_SOCKET = "workers.sock"
STATUS_FILE = "status.json"


class Supervisor:
    def __init__(self, config: Config, *, log_level: str = "info") -> None:
        self.config = config
        self.runtime_dir = config.runtime_dir
        self.state_dir = config.state_dir
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

    # --- start and stop ----------------------------------------------------------------

    async def run(self) -> int:
        status = self.state.apply_config_groups(self.config)
        if not status:
            log.error("%s", status.wrap(f"Invalid configuration {self.config.source}"))
            return 2
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.channel.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.channel.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.channel.setsockopt(zmq.LINGER, 0)
        self.channel.bind(f"ipc://{self.workers_path}")
        os.chmod(self.workers_path, 0o600)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_event.set)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_status)
        for name in self.state.topology.interfaces:
            await self.pool.start(name)
        log.info(
            "portierd running: %d groups, %d interfaces",
            len(self.state.topology.groups),
            len(self.state.topology.interfaces),
        )
        tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._tick())]
        await self.stop_event.wait()
        log.info("stopping")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        self.notifier.stopping()
        for handle in self.pool.handles.values():
            if handle.connected:
                await self._send(handle.interface, {"kind": "command", "command": "stop"})
        await self.pool.stop_all(timeout_s=3.0)
        self.channel.close(linger=0)
        self.context.term()
        with contextlib.suppress(FileNotFoundError):
            self.workers_path.unlink()
        try:
            path = save_state(self.state_dir, self.state.topology, self.state.neighbors)
            log.info("state written to %s", path)
        except OSError as exc:
            log.error("cannot write state to %s: %s", self.state_dir, exc)
        with contextlib.suppress(FileNotFoundError):
            (self.runtime_dir / STATUS_FILE).unlink()
        self.notifier.close()

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
        for handle in self.pool.handles.values():
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
        elif kind == "resync":
            await self._send_snapshot(handle)
        elif kind == "learned":
            changes, _ = self.state.on_learned(interface, message["neighbors"])
            await self.broadcast(changes, exclude=interface)
        elif kind == "link":
            await self.broadcast(self.state.on_link(interface, message))
        elif kind == "loop":
            if message["interface"] == interface:
                log.warning("loop detected on %s; disabled", interface)
                await self.broadcast(self.state.on_loop(interface, message["group"], now))
        elif kind == "prefix":
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
        if self.ready:
            self._check_ready()

    # --- timers ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        next_heartbeat = next_watchdog = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if self.watchdog_s is not None and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + self.watchdog_s
            await self.broadcast(self.state.expire(now))
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
    logging.basicConfig(
        level=args.log_level.upper(), format="portierd %(levelname)s %(message)s", stream=sys.stderr
    )
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
    supervisor = Supervisor(config, log_level=args.log_level)
    return asyncio.run(supervisor.run())


if __name__ == "__main__":
    sys.exit(main())
