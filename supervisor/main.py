"""portierd: the supervisor's wiring and its command line.

This module builds the parts and connects them, and owns nothing else: the worker
channel (`channel`, `reports`), the worker pool and its zygote, the authoritative state,
the committer that replicates, programs, saves and announces every change, the timers,
configuration application (restore and reload), readiness, the sockets (`endpoints`), the control
servers, metrics and the event stream.  Every long-running task runs under the loop
supervisor (`loops`): a loop that fails is restarted with backoff, and one that cannot
be is the daemon's exit with a non-zero status, so that systemd starts it afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import json
import logging
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from portier import __version__, logs
from portier.config import DEFAULT_PATH, Config, ConfigError, load_config
from portier.status import Status
from portier.supervisor import operations
from portier.supervisor.announce import Announcer
from portier.supervisor.bpfpath import BpfPath
from portier.supervisor.channel import WorkerChannel
from portier.supervisor.claims import ClaimDesk
from portier.supervisor.commit import Committer
from portier.supervisor.configapply import ConfigApplier
from portier.supervisor.control import ControlServer
from portier.supervisor.endpoints import WORKERS_SOCKET, Endpoints
from portier.supervisor.events import EventPublisher
from portier.supervisor.fastpath import FastPath
from portier.supervisor.guests import Guests
from portier.supervisor.health import Readiness
from portier.supervisor.kernelpath import KernelPath
from portier.supervisor.links import LinkFollower
from portier.supervisor.loops import LoopSupervisor
from portier.supervisor.metrics import MetricSources, MetricsServer
from portier.supervisor.operations import OperationParts
from portier.supervisor.persistence import StateSaver, load_state, write_atomically
from portier.supervisor.reports import WorkerReports
from portier.supervisor.sdnotify import Notifier, watchdog_interval_s
from portier.supervisor.state import ProxyState
from portier.supervisor.stats import SupervisorStats
from portier.supervisor.timers import BEAT_WITHIN_S, Timers
from portier.supervisor.views import status_view, summary_view
from portier.supervisor.workerpool import WorkerHandle, WorkerPool
from portier.supervisor.zygote import ZygoteSpawner

log = logging.getLogger("portier.supervisor")

STATUS_FILE = "status.json"


class _Steps:
    """Logs the time each shutdown step took."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        log.debug("%s in %.3f s", what, now - self.last)
        self.last = now


class Supervisor:
    """The parts of a running portierd, wired together."""

    def __init__(
        self, config: Config, *, config_path: Path | None = None, log_level: str = "info"
    ) -> None:
        self.runtime_dir = config.runtime_dir
        self.started_at = time.monotonic()
        self.exit_code = 0
        self.stop_event = asyncio.Event()
        self.context = zmq.asyncio.Context()
        self.endpoints = Endpoints(self.context, config)
        self.state = ProxyState(config)
        self.loops = LoopSupervisor(on_fatal=self._fatal)
        self.zygote = ZygoteSpawner(log_level=log_level) if config.worker_zygote else None
        self.pool = WorkerPool(
            f"ipc://{self.runtime_dir / WORKERS_SOCKET}",
            worker_args=[
                "--neighbor-capacity",
                str(config.neighbor_capacity),
                "--neighbor-lifetime",
                str(config.neighbor_lifetime_seconds),
                "--per-member-limit",
                str(config.per_member_limit),
                "--log-level",
                log_level,
            ],
            on_state=self._on_worker_state,
            zygote=self.zygote,
        )
        self.channel = WorkerChannel(self.context.socket(zmq.ROUTER), self.state, self.pool)
        self.fastpath = KernelPath(
            config.fastpath_engine,
            FastPath(enabled=config.fastpath_enabled),
            BpfPath(config.fastpath_bpf_object, self._veth_peer_elsewhere),
            on_answers_changed=lambda: self.channel.broadcast(self.state.topology_changed()),
        )
        self.saver = StateSaver(config.state_dir)
        self.events = EventPublisher()
        self.stats = SupervisorStats()
        self.readiness = Readiness(
            self.pool, self.loops, Notifier(), watchdog_s=watchdog_interval_s()
        )
        self.applier = ConfigApplier(
            self.state, config, config_path=config_path, load_state=load_state
        )
        self.committer = Committer(
            self.state,
            broadcast=self.channel.broadcast,
            fastpath=self.fastpath,
            saver=self.saver,
            events=self.events,
            applied_config=lambda: self.applier.applied,
            on_committed=self._committed,
            on_fastpath_dirty=self._fastpath_dirty,
        )
        self.applier.committer = self.committer
        self.applier.pool = self.pool
        self.applier.fastpath = self.fastpath
        self.applier.background = self.loops.background
        self.announcer = Announcer(
            self.state.topology, self.channel, self.stats, lambda: self.config.announce
        )
        self.claims = ClaimDesk(self.channel, self.committer, self.stats, self.announcer)
        self.guests = Guests(self.state, self.pool, self.committer, self.loops.background)
        self.links = LinkFollower(self.guests.links_changed)
        self.applier.apply_guests = self.guests.apply
        self.reports = WorkerReports(
            self.state,
            self.pool,
            self.channel,
            self.committer,
            self.stats,
            self.claims,
            self.announcer,
            on_connected=self.readiness.check,
        )
        self.timers = Timers(
            self.state,
            self.committer,
            self.channel,
            self.pool,
            lambda now: self.fastpath.maintain(self.state.topology, self.state.neighbors, now),
            self.readiness,
            self.loops,
            self.stats,
            self.claims,
        )
        self.control_servers: list[ControlServer] = []
        self.operations = OperationParts(
            state=self.state,
            pool=self.pool,
            committer=self.committer,
            fastpath=self.fastpath,
            reload=self.applier.reload,
            summary=self.summary,
            background=self.loops.background,
            apply_guests=self.guests.apply,
        )
        self.metrics = MetricsServer(
            MetricSources(
                state=self.state,
                pool=self.pool,
                stats=self.stats,
                fastpath=self.fastpath,
                state_save=self.saver,
                loops=self.loops,
                control_servers=self.control_servers,
                links=self.links,
            )
        )

    @property
    def config(self) -> Config:
        return self.applier.config

    # --- start and stop ----------------------------------------------------------------

    async def run(self) -> int:
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.applier.restore()
        self.events.socket = self.endpoints.bind(
            self.channel.socket, self.dispatch, self.control_servers
        )
        await self.fastpath.start(self.state.topology, self.state.neighbors, time.monotonic())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_event.set)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_status)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: self.loops.background(self.applier.reload(), "reload (SIGHUP)")
        )
        try:
            await self.metrics.start(self.config.metrics_listen)
        except OSError as exc:
            log.error("metrics endpoint %s unavailable: %s", self.config.metrics_listen, exc)
        if self.zygote is not None:
            await self.zygote.start()  # a zygote that fails leaves workers to exec
        # The links present decide the pattern-bound interfaces before any worker starts.
        await self.links.dump()
        self.guests.present = {link.name for link in self.links.links.values() if not link.loopback}
        await self.guests.apply()
        for name in self.state.topology.interfaces:
            await self.pool.start(name)
        await self.committer.save()
        log.info(
            "portierd %s running: %d groups, %d interfaces, control at %s",
            __version__,
            len(self.state.topology.groups),
            len(self.state.topology.interfaces),
            self.config.control_path,
        )
        self._start_loops()
        self.readiness.check()
        await self.stop_event.wait()
        log.info("stopping")
        started = time.monotonic()
        await self.loops.stop()
        await self.shutdown()
        log.info("stopped in %.3f s", time.monotonic() - started)
        return self.exit_code

    def _start_loops(self) -> None:
        assert self.endpoints.zap is not None
        self.loops.start("worker_channel", lambda: self.channel.receive(self.reports.handle))
        self.loops.start("timers", self.timers.run, beat_within_s=BEAT_WITHIN_S)
        self.loops.start("links", self.links.run)
        self.loops.start("zap", self.endpoints.zap.serve)
        if self.zygote is not None:
            self.loops.start("zygote", self.zygote.supervise)
        for name, server in zip(("control", "control_tcp"), self.control_servers, strict=False):
            self.loops.start(name, server.serve)

    def _fatal(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self.stop_event.set()

    async def shutdown(self) -> None:
        # Each step is timed in the debug log: a stop that overruns systemd's bound says why.
        step = _Steps()
        self.readiness.notifier.stopping()
        await self.channel.stop_workers()
        await self.pool.stop_all(timeout_s=3.0)
        step("workers stopped")
        if self.zygote is not None:
            await self.zygote.stop()
            step("zygote stopped")
        await self.committer.save()
        self.saver.close()
        step("state saved")
        await self.fastpath.remove()
        step("fast path removed")
        self.metrics.close()
        self.endpoints.close(also_remove=[self.runtime_dir / STATUS_FILE])
        self.context.term()
        self.readiness.notifier.close()

    # --- control and views -----------------------------------------------------------------

    async def dispatch(self, op: str, args: dict[str, Any]) -> tuple[Status, Any, str | None]:
        status, result = await operations.OPERATIONS[op](self.operations, args)
        return status, result, operations.outcome(op, status)

    def summary(self) -> dict[str, Any]:
        return summary_view(
            self.state.topology,
            self.state.neighbors,
            self.pool,
            ready=self.readiness.ready,
            health=self.loops.view(),
            fastpath=self.fastpath.view(),
            state_save=self.saver.view(),
            uptime_s=time.monotonic() - self.started_at,
            config_path=str(self.applier.config_path) if self.applier.config_path else None,
            state_dir=str(self.config.state_dir),
        )

    def dump_status(self) -> None:
        """SIGUSR1: write the whole state, readable, to status.json in the runtime dir."""
        view = status_view(self.state.topology, self.state.neighbors, self.pool)
        # Live Python memory blocks: a leak shows here even when freed memory stays mapped.
        view["python_blocks"] = sys.getallocatedblocks()
        data = json.dumps(view, indent=1, default=str).encode()
        path = self.runtime_dir / STATUS_FILE

        async def write() -> None:
            try:
                await asyncio.to_thread(write_atomically, path, data)
            except OSError as exc:
                log.error("cannot write %s: %s", path, exc)
            else:
                log.info("status written to %s", path)

        self.loops.background(write(), "writing the status file")

    def _fastpath_dirty(self) -> None:
        self.timers.poke()

    def _veth_peer_elsewhere(self, ifindex: int) -> bool:
        return self.links.veth_peer_elsewhere(ifindex)  # read once the path runs

    def _committed(self) -> None:
        self.stats.keep_interfaces(self.state.topology.interfaces)
        self.readiness.check()

    def _on_worker_state(self, handle: WorkerHandle) -> None:
        log.info("worker %s: %s", handle.interface, handle.state.value)
        self.events.publish(
            "worker",
            interface=handle.interface,
            state=handle.state.value,
            pid=handle.pid,
            restarts=handle.restarts,
        )
        if self.readiness.workers_ready:
            self.readiness.check()


def raise_descriptor_limit() -> None:
    """Take the soft descriptor limit up to the hard one: each worker costs a pidfd and a
    lifeline, and systemd's soft default of 1024 runs out near 500 interfaces.  Nothing
    here uses select(), the one reason to keep it low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
    raise_descriptor_limit()

    async def run() -> int:
        return await Supervisor(config, config_path=args.config, log_level=args.log_level).run()

    try:
        return asyncio.run(run())
    except ConfigError as exc:  # found while binding: keys, authorized clients
        print(f"portierd: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
