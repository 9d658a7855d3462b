"""What the supervisor does with each kind of message a worker sends.

hello (the worker is up: its link facts, then its snapshot), heartbeat (its counters and
when the next beat is due; answered at once, the only beat the supervisor sends),
resync (it lost a delta: a fresh snapshot), learned (neighbors, checked by the state;
an address that arrived or moved is announced on the upstream, see announce.py),
claim (its member claimed an address someone else owns: the state may start an owner
check, which claims.py carries out),
link (the kernel's view of its interface changed), loop (an RA revealed a loop), prefix
(the upstream's on-link prefixes).  A worker speaks only for its own interface; the
state refuses the rest.  Only messages from workers the pool spawned for interfaces
still bound are heard.  This module never talks to the socket except through the
channel, and never persists by itself except through the committer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from portier.replication import heartbeat_message
from portier.supervisor import views
from portier.supervisor.announce import Announcer
from portier.supervisor.channel import WorkerChannel
from portier.supervisor.claims import ClaimDesk
from portier.supervisor.commit import Committer
from portier.supervisor.state import ProxyState
from portier.supervisor.stats import SupervisorStats
from portier.supervisor.workerpool import WorkerHandle, WorkerPool

log = logging.getLogger("portier.supervisor")


class WorkerReports:
    def __init__(
        self,
        state: ProxyState,
        pool: WorkerPool,
        channel: WorkerChannel,
        committer: Committer,
        stats: SupervisorStats,
        claims: ClaimDesk,
        announcer: Announcer,
        *,
        on_connected: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.pool = pool
        self.channel = channel
        self.committer = committer
        self.stats = stats
        self.claims = claims
        self.announcer = announcer
        self.on_connected = on_connected
        self.clock = clock
        self.handlers = {
            "hello": self.on_hello,
            "heartbeat": self.on_heartbeat,
            "resync": self.on_resync,
            "learned": self.on_learned,
            "claim": self.on_claim,
            "link": self.on_link,
            "loop": self.on_loop,
            "prefix": self.on_prefix,
        }

    async def handle(self, interface: str, message: dict[str, Any]) -> None:
        handle = self.pool.heard_from(interface)
        if handle is None or interface not in self.state.topology.interfaces:
            return
        handler = self.handlers.get(message["kind"])
        if handler is not None:
            await handler(handle, message)

    async def on_hello(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        interface = handle.interface
        if message["interface"] != interface:
            return
        changes = self.state.on_link(interface, message)  # a malformed hello stops here
        # The reported pid is kept for display only: signals go to the spawned process.
        handle.reported_pid = message["pid"]
        self.pool.mark_running(handle)
        await self.channel.send_snapshot(handle)
        await self.channel.broadcast(changes, exclude=interface)
        self.on_connected()

    async def on_heartbeat(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        """Keep the counters (an unchanged beat has none: the last ones stand), note when
        the next beat is due, and answer: the answer is how the worker knows we live."""
        if "counters" in message:
            handle.counters = message["counters"]
            handle.drops = message.get("drops", {})
            handle.histograms = message.get("histograms", {})
            handle.frames = views.frame_counts(handle.counters, handle.drops)
        handle.quiet_s = float(message.get("next_s", 0.0))
        await self.channel.send(handle.interface, heartbeat_message())

    async def on_resync(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        await self.channel.send_snapshot(handle)

    async def on_learned(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        interface = handle.interface
        learned = self.state.on_learned(interface, message["neighbors"], self.clock())
        if learned.settled or learned.probes:
            # Checks ended or started: every replica must show it, the reporter's too.
            await self.claims.carry_out(learned.changes, learned.settled, learned.probes)
        elif learned.accepted:
            self.committer.neighbors_dirty = True
            self.committer.mark_fastpath_dirty()
            await self.channel.broadcast(learned.changes, exclude=interface)
        await self.announcer.arrived(learned.arrived)
        for entry in learned.accepted:
            self.stats.learned[entry.group] += 1
            self.committer.publish(
                "neighbor",
                change="learned",
                group=entry.group,
                address=entry.address,
                interface=entry.interface,
                mac=entry.mac,
                router=entry.is_router,
            )

    async def on_claim(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        changes, settled, probes = self.state.on_claim(
            handle.interface,
            message["group"],
            bytes(message["address"]),
            bytes(message["mac"]),
            self.clock(),
        )
        await self.claims.carry_out(changes, settled, probes)

    async def on_link(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        interface = handle.interface
        await self.channel.broadcast(self.state.on_link(interface, message))
        await self.committer.sync_fastpath()  # a re-created interface has a new ifindex
        self.committer.publish(
            "state", op="link", interface=interface, up=message["up"], ifindex=message["ifindex"]
        )

    async def on_loop(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        interface = handle.interface
        if message["interface"] != interface:
            return
        topology = self.state.topology
        log.warning("loop detected on %s; disabled for %.0f s", interface, topology.loop_disable_s)
        changes = self.state.on_loop(interface, message["group"], self.clock())
        if not changes:
            return
        self.stats.loops[interface] += 1
        await self.channel.broadcast(changes)
        await self.committer.sync_fastpath()  # stop forwarding to it at once
        await self.committer.save()
        self.committer.publish(
            "loop",
            interface=interface,
            group=message["group"],
            disabled_for_s=topology.loop_disable_s,
        )

    async def on_prefix(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        interface = handle.interface
        self.committer.mark_fastpath_dirty()
        changes = self.state.on_prefix(
            interface,
            message["group"],
            bytes(message["prefix"]),
            message["length"],
            message["valid_until"],
        )
        await self.channel.broadcast(changes, exclude=interface)
