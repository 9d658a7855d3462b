"""Prometheus metrics, built at scrape time from what the supervisor already knows.

Nothing is counted per packet here: workers count in their own process and report in
their heartbeats; a scrape turns the latest reports and the supervisor's state into
metric families.  Labels are bounded (interfaces, groups, reasons, states, operations):
no per-address label ever.  A label set appears once per family: what several workers
report about one interface (drops name the interface they concern, not the reporter)
is summed.  The endpoint is a small HTTP server on the asyncio loop, so a scrape reads
the state from the thread that writes it.  It is handed the parts it reads
(`MetricSources`) and changes none of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from portier import __version__
from portier.groups import DisableReason
from portier.schema import ND_RELAY_BUCKETS_S
from portier.supervisor.links import LinkFollower
from portier.supervisor.loops import LoopSupervisor
from portier.supervisor.state import ProxyState
from portier.supervisor.stats import SupervisorStats
from portier.supervisor.workerpool import WorkerPool

log = logging.getLogger("portier.supervisor")

ND_TYPES = {"133": "rs", "134": "ra", "135": "ns", "136": "na", "137": "redirect"}


FASTPATH_EVENTS = {
    "nftables": ("transactions", "failures", "rebuilds", "repairs"),
    "bpf": ("updates", "attaches", "full_syncs", "repairs"),
    "off": ("transactions", "failures", "rebuilds", "repairs"),
}


class Viewable(Protocol):
    def view(self) -> dict[str, Any]: ...


class RequestCounter(Protocol):
    requests: Any  # Counter[(operation, code name)]


@dataclass(frozen=True)
class MetricSources:
    """What a scrape reads, by name."""

    state: ProxyState
    pool: WorkerPool
    stats: SupervisorStats
    fastpath: Viewable
    state_save: Viewable
    loops: LoopSupervisor
    control_servers: Iterable[RequestCounter]
    links: LinkFollower


def drops_by_interface(pool: WorkerPool) -> dict[tuple[str, str], int]:
    """Every worker's drop counts, summed by (interface named in the key, reason)."""
    totals: dict[tuple[str, str], int] = {}
    for handle in pool.handles.values():
        for key, value in handle.drops.items():
            interface, sep, reason = key.partition("|")
            if not sep:
                interface, reason = handle.interface, key
            totals[(interface, reason)] = totals.get((interface, reason), 0) + value
    return totals


class PortierCollector:
    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        sup = self.sources
        topology = sup.state.topology
        now = time.monotonic()

        info = GaugeMetricFamily("portier_build_info", "Portier version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        received = CounterMetricFamily(
            "portier_frames_received",
            "Frames read from an interface",
            labels=["interface", "group", "kind"],
        )
        received_nd = CounterMetricFamily(
            "portier_nd_received",
            "ND messages read from an interface, by type",
            labels=["interface", "group", "type"],
        )
        forwarded = CounterMetricFamily(
            "portier_frames_forwarded",
            "Frames sent out of an interface",
            labels=["interface", "group"],
        )
        dropped = CounterMetricFamily(
            "portier_frames_dropped",
            "Frames not forwarded, by reason",
            labels=["interface", "group", "reason"],
        )
        held = GaugeMetricFamily(
            "portier_held_frames",
            "Frames waiting for a destination to be resolved",
            labels=["interface"],
        )
        hold_events = CounterMetricFamily(
            "portier_hold", "Held frames by outcome", labels=["interface", "outcome"]
        )
        solicits = CounterMetricFamily(
            "portier_solicitations_sent",
            "Neighbor Solicitations the proxy sent itself",
            labels=["interface"],
        )
        packet_too_big = CounterMetricFamily(
            "portier_packet_too_big_sent", "ICMPv6 Packet Too Big sent", labels=["interface"]
        )
        relay = HistogramMetricFamily(
            "portier_nd_relay_seconds",
            "ND message from receipt to its last transmission",
            labels=["interface"],
        )

        def group_of(name: str) -> str:
            interface = topology.interfaces.get(name)
            return (interface.group if interface else None) or ""

        drops = drops_by_interface(sup.pool)
        for (name, reason), value in sorted(drops.items()):
            dropped.add_metric([name, group_of(name), reason], value)
        for handle in sup.pool.handles.values():
            name = handle.interface
            group = group_of(name)
            counters = handle.counters
            received.add_metric([name, group, "nd"], counters.get("rx_nd", 0))
            received.add_metric([name, group, "data"], counters.get("rx_data", 0))
            for code, label in ND_TYPES.items():
                received_nd.add_metric([name, group, label], counters.get(f"rx_nd|{code}", 0))
            held.add_metric([name], counters.get("held_frames", 0))
            hold_events.add_metric([name, "held"], counters.get("held", 0))
            hold_events.add_metric([name, "released"], counters.get("released", 0))
            hold_events.add_metric([name, "timed_out"], drops.get((name, "hold_timeout"), 0))
            solicits.add_metric([name], counters.get("solicits_sent", 0))
            packet_too_big.add_metric([name], counters.get("ptb_sent", 0))
            histogram = handle.histograms.get("nd_relay_seconds")
            if histogram:
                buckets, total = [], 0
                for bound, count in zip(
                    (*map(str, ND_RELAY_BUCKETS_S), "+Inf"), histogram["buckets"], strict=False
                ):
                    total += count
                    buckets.append((bound, total))
                relay.add_metric([name], buckets, histogram["sum"])
        # Forwarded frames are counted by the worker that sent them, per egress.
        sent: dict[str, int] = {}
        for handle in sup.pool.handles.values():
            for key, value in handle.counters.items():
                if key.startswith("tx|"):
                    sent[key[3:]] = sent.get(key[3:], 0) + value
        for name, value in sorted(sent.items()):
            forwarded.add_metric([name, group_of(name)], value)
        yield from (
            received,
            received_nd,
            forwarded,
            dropped,
            held,
            hold_events,
            solicits,
            packet_too_big,
            relay,
        )

        neighbors = GaugeMetricFamily(
            "portier_neighbors", "Neighbors in the cache", labels=["group", "state"]
        )
        counts: dict[tuple[str, str], int] = {}
        for entry in sup.state.neighbors:
            key = (entry.group, entry.state(now).value)
            counts[key] = counts.get(key, 0) + 1
        for group in topology.groups:
            for state in ("reachable", "stale"):
                neighbors.add_metric([group, state], counts.get((group, state), 0))
        yield neighbors
        learned = CounterMetricFamily(
            "portier_neighbors_learned", "Neighbors learned or changed", labels=["group"]
        )
        expired = CounterMetricFamily(
            "portier_neighbors_expired", "Neighbors that expired", labels=["group"]
        )
        for group in sorted(set(sup.stats.learned) | set(topology.groups)):
            learned.add_metric([group], sup.stats.learned.get(group, 0))
            expired.add_metric([group], sup.stats.expired.get(group, 0))
        yield learned
        yield expired
        # Claims: the supervisor settles refused/moved/over_quota; the workers drop what
        # claimed over quota or spoke from someone else's address.
        claims = CounterMetricFamily(
            "portier_claims",
            "Address claims by a member, by outcome",
            labels=["interface", "outcome"],
        )
        claim_counts: dict[tuple[str, str], int] = dict(sup.stats.claims)
        for (name, reason), value in drops.items():
            if reason in ("over_quota", "source_invalid"):
                claim_counts[(name, reason)] = claim_counts.get((name, reason), 0) + value
        for handle in sup.pool.handles.values():
            for outcome in ("refused", "moved", "over_quota", "source_invalid"):
                claim_counts.setdefault((handle.interface, outcome), 0)
        for (name, outcome), value in sorted(claim_counts.items()):
            claims.add_metric([name, outcome], value)
        yield claims
        announcements = CounterMetricFamily(
            "portier_announcements",
            "Unsolicited NAs on the upstream for a member's arriving addresses, by outcome",
            labels=["interface", "outcome"],
        )
        for (name, outcome), value in sorted(sup.stats.announcements.items()):
            announcements.add_metric([name, outcome], value)
        yield announcements
        owned = GaugeMetricFamily(
            "portier_owned_addresses",
            "Addresses a member owns in its group",
            labels=["interface", "group"],
        )
        for (group, name), value in sorted(sup.state.neighbors.owned_counts().items()):
            owned.add_metric([name, group], value)
        yield owned

        links = sup.links
        yield GaugeMetricFamily("portier_host_links", "Links on the host", value=len(links.links))
        yield CounterMetricFamily(
            "portier_link_dumps", "Full dumps of the host's links", value=links.dumps
        )
        yield CounterMetricFamily(
            "portier_link_overruns",
            "Times link notifications were lost (ENOBUFS) and the links dumped again",
            value=links.overruns,
        )
        workers = GaugeMetricFamily(
            "portier_workers", "Worker processes by state", labels=["state"]
        )
        states: dict[str, int] = {}
        for handle in sup.pool.handles.values():
            states[handle.state.value] = states.get(handle.state.value, 0) + 1
        for state in ("starting", "running", "backoff", "failed", "stopped"):
            workers.add_metric([state], states.get(state, 0))
        yield workers
        restarts = CounterMetricFamily(
            "portier_worker_restarts", "Worker restarts", labels=["interface"]
        )
        for handle in sup.pool.handles.values():
            restarts.add_metric([handle.interface], handle.restarts)
        yield restarts

        loops = CounterMetricFamily(
            "portier_loop_detections", "RAs that revealed a loop", labels=["interface"]
        )
        for name, count in sorted(sup.stats.loops.items()):
            loops.add_metric([name], count)
        yield loops
        disabled = GaugeMetricFamily(
            "portier_interfaces_disabled",
            "Bound interfaces not forwarding, by reason",
            labels=["reason"],
        )
        for reason in DisableReason:
            disabled.add_metric(
                [reason.value],
                sum(1 for i in topology.interfaces.values() if reason in i.disable_reasons),
            )
        yield disabled
        interfaces = GaugeMetricFamily(
            "portier_interfaces", "Bound interfaces", labels=["group", "role"]
        )
        roles: dict[tuple[str, str], int] = {}
        for interface in topology.interfaces.values():
            owner = topology.groups.get(interface.group) if interface.group else None
            role = "upstream" if owner and owner.upstream == interface.name else "member"
            key = (interface.group or "", role)
            roles[key] = roles.get(key, 0) + 1
        for (group_name, role), count in sorted(roles.items()):
            interfaces.add_metric([group_name, role], count)
        yield interfaces

        fast = sup.fastpath.view()
        active = GaugeMetricFamily("portier_fastpath_active", "1 while the kernel fast path is on")
        active.add_metric([], 1 if fast["active"] else 0)
        yield active
        enabled = GaugeMetricFamily(
            "portier_fastpath_enabled", "1 while the configuration asks for the kernel fast path"
        )
        enabled.add_metric([], 1 if fast.get("enabled") else 0)
        yield enabled
        programmed = GaugeMetricFamily(
            "portier_fastpath_neighbors", "Neighbors forwarded to by the kernel"
        )
        programmed.add_metric([], fast["neighbors"])
        yield programmed
        kernel = CounterMetricFamily(
            "portier_fastpath_forwarded_packets", "Frames the kernel fast path forwarded"
        )
        kernel.add_metric([], fast.get("kernel_packets", 0))
        yield kernel
        events = CounterMetricFamily(
            "portier_fastpath_events",
            "Kernel fast path programming by kind (nftables: transactions, rebuilds;"
            " BPF: map updates, attaches, full syncs; both: repairs, failures)",
            labels=["event"],
        )
        for event in FASTPATH_EVENTS[fast.get("engine", "off")]:
            events.add_metric([event], fast.get(event, 0))
        yield events
        for key, name, text in (
            ("answered", "portier_fastpath_answered", "NS the kernel answered itself (BPF)"),
            (
                "answers_limited",
                "portier_fastpath_answers_limited",
                "Kernel answers held back because the member's bucket was empty (BPF)",
            ),
            (
                "vlan_tagged",
                "portier_fastpath_vlan_tagged",
                "VLAN-tagged frames that arrived on a member and were never forwarded (BPF)",
            ),
        ):
            family = CounterMetricFamily(name, text)
            family.add_metric([], fast.get(key, 0))
            yield family
        fast_failures = CounterMetricFamily(
            "portier_fastpath_failures", "Times the kernel fast path failed and turned off"
        )
        fast_failures.add_metric([], fast.get("failures", 0))
        yield fast_failures

        saved = sup.state_save.view()
        save_ok = GaugeMetricFamily(
            "portier_state_save_ok", "1 while the last write of the state file succeeded"
        )
        save_ok.add_metric([], 0 if saved.get("error") else 1)
        yield save_ok
        save_failures = CounterMetricFamily(
            "portier_state_save_failures", "Writes of the state file that failed"
        )
        save_failures.add_metric([], saved.get("failures", 0))
        yield save_failures
        saved_at = GaugeMetricFamily(
            "portier_state_saved_timestamp_seconds",
            "Wall-clock time of the last successful write of the state file",
        )
        saved_at.add_metric([], saved.get("saved_at") or 0)
        yield saved_at

        health = sup.loops.view()["loops"]
        loop_restarts = CounterMetricFamily(
            "portier_loop_restarts",
            "Restarts of a supervisor loop after a failure",
            labels=["loop"],
        )
        loop_healthy = GaugeMetricFamily(
            "portier_loop_healthy",
            "1 while a supervisor loop runs and makes progress",
            labels=["loop"],
        )
        for name, loop in health.items():
            loop_restarts.add_metric([name], loop["restarts"])
            loop_healthy.add_metric([name], 1 if loop["healthy"] else 0)
        yield loop_restarts
        yield loop_healthy

        requests = CounterMetricFamily(
            "portier_control_requests",
            "Control requests by operation and result code",
            labels=["operation", "code"],
        )
        totals: dict[tuple[str, str], int] = {}
        for server in sup.control_servers:
            for key, value in server.requests.items():
                totals[key] = totals.get(key, 0) + value
        for (op, code), value in sorted(totals.items()):
            requests.add_metric([op, code], value)
        yield requests


class MetricsServer:
    """GET /metrics over HTTP/1.1, served on the supervisor's event loop."""

    def __init__(self, sources: MetricSources) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PortierCollector(sources))  # type: ignore[arg-type]
        self.server: asyncio.Server | None = None

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.server = await asyncio.start_server(self._serve, host.strip("[]"), int(port))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if request.startswith(b"GET ") and path.split(b"?")[0] in (b"/metrics", b"/"):
                body = generate_latest(self.registry)
                head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
            else:
                body = b"not found: try /metrics\n"
                head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(
                f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
