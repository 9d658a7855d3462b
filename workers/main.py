"""The worker process: packet I/O on one interface around the portier engine.

It connects a DEALER (routing id = its interface name) to the supervisor, says hello,
and forwards only once the supervisor's snapshot has arrived: frames that come in before
then wait in the socket buffer instead of being judged against an empty state.  It keeps
the replica current from numbered deltas (portier.replication: a gap or a message it
cannot apply makes it ask for a snapshot, and it neither forwards nor answers until
then), reports what it learns in batches, and heartbeats with its counters.  A silent
supervisor (stopped, or stalled) does not stop it: it forwards on with its replica and
asks for a snapshot once the supervisor speaks again; it dies with the supervisor's
process: by PDEATHSIG when the supervisor started it, or, when forked from the zygote
(workers/zygote.py), when the supervisor's pidfd it inherited becomes readable.  The
answer thread reads only the frozen answer table this loop publishes (portier.answers),
never the replica itself.  It never logs per packet.
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import errno
import logging
import math
import os
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

import zmq

from portier import logs, schema
from portier.answers import AnswerTables, EarlyAnswers
from portier.drops import DropReason
from portier.engine import (
    Claimed,
    Dropped,
    Engine,
    Expired,
    Learned,
    LoopCleared,
    LoopDetected,
    PrefixLearned,
    Transmit,
)
from portier.groups import Topology
from portier.neighbors import NeighborCache
from portier.replication import NO_SEQ, Outcome, Replica, resync_message
from portier.schema import ND_RELAY_BUCKETS_S, SchemaError, neighbor_to_wire
from portier.workers import packetio
from portier.workers.answerer import STAMP, Answerer
from portier.workers.linkwatch import LinkWatch

log = logging.getLogger("portier.worker")

# Heartbeats carry the counters: every second while frames come, and while nothing
# changes ever less often, HEARTBEAT_IDLE_S at first and then twice as long each time up
# to HEARTBEAT_IDLE_MAX_S, so that hundreds of idle workers cost next to nothing.  Each
# beat says when the next one comes (`next_s`): the supervisor kills a worker that stays
# silent 5 s past its promise, and answers each beat, which is how a worker hears that the
# supervisor lives.  An unchanged beat leaves its counters out (the supervisor keeps the
# last ones).
HEARTBEAT_S = 1.0
HEARTBEAT_IDLE_S = 2.0
HEARTBEAT_IDLE_MAX_S = 30.0
SUPERVISOR_SILENCE_S = 15.0
LEARNED_FLUSH_S = 0.01
LEARNED_BATCH_MAX = 512
FRAMES_PER_TURN = 256
PR_SET_PDEATHSIG = 1


class Histogram:
    """Counts per bucket (not cumulative) and a sum; the supervisor turns it into metrics."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def wire(self) -> dict[str, Any]:
        return {"buckets": list(self.counts), "sum": self.total}


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM us if the supervisor goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Worker:
    def __init__(
        self,
        interface: str,
        endpoint: str,
        *,
        capacity: int,
        lifetime_s: float,
        per_member_limit: int = 256,
        silence_s: float = SUPERVISOR_SILENCE_S,
        supervisor_pidfd: int | None = None,
    ) -> None:
        self.interface = interface
        self.supervisor_pidfd = supervisor_pidfd
        self.context: zmq.Context = zmq.Context.instance()
        self.channel = self.context.socket(zmq.DEALER)
        self.channel.setsockopt(zmq.IDENTITY, interface.encode())
        self.channel.setsockopt(zmq.LINGER, 500)
        self.channel.connect(endpoint)
        self.topology = Topology()
        self.neighbors = NeighborCache(
            capacity=capacity, lifetime_s=lifetime_s, per_member_limit=per_member_limit
        )
        self.engine = Engine(self.topology, self.neighbors)
        self.replica = Replica(self.topology, self.neighbors)
        self.link = LinkWatch(interface)
        self.receivers: list[socket.socket] = []
        self.sender: socket.socket | None = None
        self.counters: Counter[str] = Counter()
        self.transmitted: Counter[str] = Counter()
        self.nd_types: Counter[int] = Counter()
        self.relay = Histogram(ND_RELAY_BUCKETS_S)
        self.engine_errors = 0
        self.log_limit = logs.RateLimiter(burst=3, interval_s=60.0)
        self.drops: Counter[str] = Counter()
        self.learned: list[dict[str, Any]] = []
        self.learned_since = 0.0
        self.last_beat: dict[str, Any] = {}
        self.last_heard = time.monotonic()
        self.unanswered_since: float | None = None  # our first beat since the last word
        self.beat_interval = HEARTBEAT_S
        self.next_beat = 0.0
        self.supervisor_silent = False
        self.silence_s = silence_s
        self.stopping = False
        self.buffer = packetio.receive_buffer(packetio.RECV_BUFFER_BYTES)
        self.view = memoryview(self.buffer)
        # Multicast NS come from the answer thread, answered first (answerer.py), from
        # the tables this thread publishes to `early` (portier.answers).
        self.answer_tables = AnswerTables(interface)
        self.early = EarlyAnswers()
        self.answered = self.context.socket(zmq.PULL)
        endpoint = f"inproc://answered-{interface}-{id(self):x}"  # closing is not instant
        self.answered.bind(endpoint)
        self.answerer = Answerer(interface, self.early.answer, self.context, endpoint)

    @property
    def seq(self) -> int | None:
        """The replica's sequence number; None while it is stale."""
        return self.replica.seq

    # --- channel -----------------------------------------------------------------

    def send(self, kind: str, **fields: Any) -> None:
        try:
            self.channel.send(schema.encode({"kind": kind, **fields}), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["channel_send_dropped"] += 1

    def hello(self) -> None:
        self.send("hello", interface=self.interface, pid=os.getpid(), **self.link.state.wire())

    def on_message(self, raw: bytes) -> None:
        try:
            message = schema.decode_worker(raw)
        except SchemaError as exc:
            self.counters["channel_bad_messages"] += 1
            log.warning("bad message from supervisor: %s", exc.status)
            return
        now = time.monotonic()
        self.last_heard = now
        self.unanswered_since = None
        kind = message["kind"]
        if self.supervisor_silent:
            self.supervisor_silent = False
            log.info("the supervisor speaks again; asking for a fresh snapshot")
            if kind != "snapshot":
                self.request_snapshot()
        if kind in ("snapshot", "delta"):
            self._on_replication(self.replica.apply(message), kind, now)
        elif kind == "command" and message["command"] == "stop":
            self.stopping = True
        elif kind == "command" and message["command"] in ("probe", "announce"):
            self._command(message["command"], message.get("args") or {})
        elif kind != "heartbeat":
            self.counters["channel_unexpected_messages"] += 1

    def _command(self, command: str, args: dict[str, Any]) -> None:
        """probe: the supervisor checks an owner behind this interface (send it the NS);
        announce: a guest address arrived or moved (the unsolicited NA upstream)."""
        group, address, router = args.get("group"), args.get("address"), args.get("router", False)
        if (
            not isinstance(group, str)
            or not isinstance(address, bytes)
            or len(address) != 16
            or not isinstance(router, bool)
        ):
            self.counters["channel_bad_messages"] += 1
            return
        if self.replica.stale:
            return
        if command == "probe":
            self._handle(self.engine.probe(group, address))
        else:
            self._handle(self.engine.announce(group, address, router))

    def request_snapshot(self) -> None:
        self.counters["resyncs_requested"] += 1
        self.send(**resync_message(self.replica.seq))

    def _on_replication(self, outcome: Outcome, kind: str, now: float) -> None:
        if outcome.resync:
            # Stale from here until the snapshot: the answer thread stops answering now.
            self._withdraw_answers()
            if outcome.error is not None:
                self.counters["channel_bad_messages"] += 1
                if outcome.unknown_op:
                    self.counters["channel_unknown_ops"] += 1
                log.warning(
                    "bad %s from supervisor: %s; asking for a snapshot", kind, outcome.error
                )
            self.counters["resyncs_requested"] += 1
            self.send(**resync_message(outcome.resync_seq))
            return
        if kind == "snapshot":
            log.info("snapshot %d: %d neighbors", self.replica.seq, len(self.neighbors))
        if outcome.topology_changed:
            self._sync_own_link()
        if outcome.topology_changed or outcome.flushed:
            self.answer_tables.topology_changed()
        for neighbor in outcome.neighbors:
            self.answer_tables.neighbor_changed(self.topology, neighbor)
            self._handle(self.engine.release_held(neighbor, now))
        for group, address in outcome.removed:
            self.answer_tables.neighbor_removed(group, address)

    def _withdraw_answers(self) -> None:
        self.early.publish(None)
        self.answerer.hold(True)

    def publish_answers(self) -> None:
        """Hand the answer thread the current table (a new one only after a change)."""
        if self.replica.stale:
            return
        table = self.answer_tables.publish(self.topology, self.neighbors)
        if table is not self.early.table:
            self.early.publish(table)
            self.answerer.hold(False)

    def _sync_own_link(self) -> None:
        """Our own link facts are fresher here than in the supervisor's echo."""
        state = self.link.state
        if self.interface in self.topology.interfaces and state.ifindex:
            self.topology.update_link(
                self.interface,
                ifindex=state.ifindex,
                mac=state.mac,
                mtu=state.mtu,
                addresses=state.addresses,
            )

    # --- sockets -----------------------------------------------------------------

    def open_receivers(self) -> None:
        self.close_receivers()
        state = self.link.state
        if not state.ifindex:
            return
        if state.loopback:
            log.error("refusing to proxy on loopback interface %s", self.interface)
            return
        nd_filter = packetio.ND_UNANSWERED_FILTER
        try:
            self.answerer.attach(packetio.open_answer_socket(self.interface, state.ifindex))
        except OSError as exc:  # the main loop reads and answers them itself
            log.warning("cannot open the answer socket on %s: %s", self.interface, exc.strerror)
            nd_filter = packetio.ND_FILTER
        try:
            self.receivers = [
                packetio.open_receiver(self.interface, state.ifindex, nd_filter),
                packetio.open_receiver(self.interface, state.ifindex, packetio.DATA_FILTER),
            ]
        except OSError as exc:
            self.close_receivers()
            log.error("cannot open packet sockets on %s: %s", self.interface, exc.strerror)

    def packet_sockets(self) -> list[socket.socket]:
        """Every socket that receives on the interface: ND, data, and the answer thread's."""
        answer_sock = self.answerer.sock
        return [*self.receivers, *([answer_sock] if answer_sock else [])]

    def close_receivers(self) -> None:
        sockets = self.packet_sockets()
        self.answerer.attach(None)
        for sock in sockets:
            sock.close()
        self.receivers = []

    def egress_socket(self) -> socket.socket | None:
        """The one send socket, for every egress: each frame names its interface.

        One socket, not one per member: a packet socket's close waits for an RCU grace
        period (~12 ms measured here), so a worker holding one per member of a group of
        hundreds would take seconds to die and be replaced.
        """
        if self.sender is None:
            try:
                self.sender = packetio.open_sender()
            except OSError as exc:
                errname = errno.errorcode.get(exc.errno or 0, "unknown")
                self.counters[f"tx_open_error_{errname}"] += 1
        return self.sender

    def transmit(self, action: Transmit) -> None:
        name = action.interface
        interface = self.topology.interfaces.get(name)
        sock = self.egress_socket()
        if sock is None or interface is None or not interface.ifindex:
            self.drops[f"{name}|no_egress_socket"] += 1
            return
        header = action.meta if action.meta is not None else packetio.ZERO_VNET_HDR
        try:
            # The name is resolved by the kernel at each send: a re-created interface's
            # new ifindex is used at once.
            sock.sendmsg([header, action.frame], [], 0, (name, 0))  # type: ignore[list-item]
        except OSError as exc:
            errname = errno.errorcode.get(exc.errno or 0, "unknown").lower()
            self.drops[f"{name}|tx_{errname}"] += 1
            return
        self.transmitted[name] += 1

    # --- packets -----------------------------------------------------------------

    def drain(self, sock: socket.socket, is_nd: bool, budget: int) -> int:
        """Read up to `budget` frames; each frame's vnet header rides along as its meta."""
        ingress = self.interface
        buffer = self.buffer
        view = self.view
        header_len = packetio.VNET_HDR_LEN
        limit = len(buffer)
        now = time.monotonic()
        count = 0
        while count < budget:
            try:
                size = sock.recv_into(buffer, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENETDOWN:
                    break
                raise
            count += 1
            if size <= header_len or size > limit:
                self.drops[f"{ingress}|{DropReason.TRUNCATED.value}"] += 1
                continue
            received_at = time.perf_counter()
            header = bytes(view[:header_len])
            self.receive(header, bytes(view[header_len:size]), is_nd, now, received_at)
            # A turn can be long (each NS for an unknown target goes out of every member):
            # beat within it, or the supervisor takes a busy worker for a hung one.
            self.beat_if_due(time.monotonic())
        self.counters["rx_nd" if is_nd else "rx_data"] += count
        return count

    def drain_answered(self, budget: int) -> int:
        """The multicast NS the answer thread has seen (and answered or not), for the relay."""
        now = time.monotonic()
        count = 0
        while count < budget:
            try:
                header, frame, stamp = self.answered.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            count += 1
            received_at, answered = STAMP.unpack(stamp)
            self.receive(header, frame, True, now, received_at, answered=answered)
        self.counters["rx_nd"] += count
        return count

    def receive(
        self,
        header: bytes,
        frame: bytes,
        is_nd: bool,
        now: float,
        received_at: float,
        answered: bool = False,
    ) -> None:
        """Judge one received frame and carry out what the engine decides."""
        segment = 0
        if is_nd:
            self.nd_types[frame[54]] += 1
        if header[0] & packetio.VNET_F_NEEDS_CSUM and is_nd:
            # ND is validated and rewritten here, so its checksum must be whole.
            frame = packetio.complete_checksum(frame, header)
            header = packetio.ZERO_VNET_HDR
        elif header[1]:
            segment = packetio.segment_bytes(frame, header)
        try:
            actions = self.engine.handle_frame(
                self.interface, frame, now, segment_bytes=segment, meta=header, answered=answered
            )
        except Exception:  # a bug costs this frame, never the worker
            self.engine_errors += 1
            if self.engine_errors & (self.engine_errors - 1) == 0:  # 1, 2, 4, 8, ...
                log.exception("engine failed on a frame (%d so far)", self.engine_errors)
            return
        self._handle(actions)
        if is_nd and actions and type(actions[-1]) is Transmit:
            self.relay.observe(time.perf_counter() - received_at)

    def _handle(self, actions: list) -> None:
        for action in actions:
            kind = type(action)
            if kind is Transmit:
                self.transmit(action)
            elif kind is Dropped:
                self.drops[f"{action.interface}|{action.reason.value}"] += action.frames
            elif kind is Learned:
                if not self.learned:
                    self.learned_since = time.monotonic()
                self.learned.append(neighbor_to_wire(action.neighbor))
                self.answer_tables.neighbor_changed(self.topology, action.neighbor)
            elif kind is Claimed:
                self.send("claim", group=action.group, address=action.address, mac=action.mac)
            elif kind is Expired:
                entry = action.neighbor
                self.answer_tables.neighbor_removed(entry.group, entry.address)
            elif kind is LoopCleared:
                self.answer_tables.topology_changed()
            elif kind is LoopDetected:
                self.answer_tables.topology_changed()
                allowed, held = self.log_limit.allow(f"loop {action.interface}")
                if allowed:
                    log.warning(
                        "loop detected: RA on a member that must not see one",
                        extra={
                            "fields": {
                                "interface": action.interface,
                                "group": action.group,
                                "suppressed": held,
                            }
                        },
                    )
                self.send(
                    "loop", interface=action.interface, group=action.group, until=action.until
                )
            elif kind is PrefixLearned:
                self.send(
                    "prefix",
                    group=action.group,
                    prefix=action.prefix,
                    length=action.length,
                    valid_until=action.valid_until,
                )

    def flush_learned(self, now: float, force: bool = False) -> None:
        if self.learned and (
            force
            or len(self.learned) >= LEARNED_BATCH_MAX
            or now - self.learned_since >= LEARNED_FLUSH_S
        ):
            self.send("learned", neighbors=self.learned)
            self.learned = []

    def heartbeat(self, now: float) -> float:
        """Send the heartbeat; the seconds until the next one."""
        kernel_drops = sum(packetio.drops(sock) for sock in self.packet_sockets())
        if kernel_drops:
            self.drops[f"{self.interface}|{DropReason.SOCKET_OVERFLOW.value}"] += kernel_drops
        counters = dict(self.counters)
        counters.update(self.engine.counters)
        counters.update({f"tx|{name}": count for name, count in self.transmitted.items()})
        counters.update({f"rx_nd|{kind}": count for kind, count in self.nd_types.items()})
        # The answer thread's counters are its own; a dict copy is one step under the GIL.
        early = dict(self.early.counters)
        counters.update(dict(self.answerer.counters))
        counters["answered"] = self.engine.counters["answered"] + early["answered"]
        counters["early_answers_limited"] = early["answers_limited"]
        counters.update({f"link_{key}": count for key, count in self.link.counters.items()})
        counters["replica_neighbors"] = len(self.neighbors)
        counters["engine_errors"] = self.engine_errors
        counters["held_frames"] = len(self.engine.hold)
        beat = {
            "seq": NO_SEQ if self.seq is None else self.seq,
            "counters": counters,
            "drops": dict(self.drops),
            "histograms": {"nd_relay_seconds": self.relay.wire()},
        }
        changed, self.last_beat = beat != self.last_beat, beat
        if changed:
            self.beat_interval = HEARTBEAT_S
            self.send("heartbeat", next_s=self.beat_interval, **beat)
        else:
            doubled = max(HEARTBEAT_IDLE_S, self.beat_interval * 2)
            self.beat_interval = min(HEARTBEAT_IDLE_MAX_S, doubled)
            self.send("heartbeat", next_s=self.beat_interval, seq=beat["seq"])
        if self.unanswered_since is None:
            self.unanswered_since = now
        return self.beat_interval

    def beat_if_due(self, now: float) -> None:
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat(now)

    # --- loop --------------------------------------------------------------------

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self.channel, zmq.POLLIN)
        poller.register(self.link.fileno(), zmq.POLLIN)
        poller.register(self.answered, zmq.POLLIN)
        if self.supervisor_pidfd is not None:
            poller.register(self.supervisor_pidfd, zmq.POLLIN)
        self.answerer.start()
        self.open_receivers()
        registered: list[int] = []  # pyzmq reports plain sockets by file descriptor
        self.hello()
        self.next_beat = time.monotonic()
        while not self.stopping:
            # While the replica is stale, frames wait in their sockets: a socket in the
            # poller would make poll() return at once, again and again, until the
            # snapshot came (hundreds of workers spinning through a start-up).
            descriptors = [] if self.replica.stale else [s.fileno() for s in self.receivers]
            if registered != descriptors:
                for fd in registered:
                    poller.unregister(fd)
                for fd in descriptors:
                    poller.register(fd, zmq.POLLIN)
                registered = descriptors
            now = time.monotonic()
            deadline = self.next_beat
            engine_deadline = None if self.replica.stale else self.engine.next_deadline()
            if engine_deadline is not None:
                deadline = min(deadline, engine_deadline)
            if self.learned:
                deadline = min(deadline, self.learned_since + LEARNED_FLUSH_S)
            if self.link.pending:
                deadline = min(deadline, self.link.retry_at)
            if self.unanswered_since is not None and not self.supervisor_silent:
                deadline = min(deadline, self.unanswered_since + self.silence_s)
            timeout_ms = max(0.0, (deadline - now) * 1000)
            ready = dict(poller.poll(math.ceil(timeout_ms)))
            if self.supervisor_pidfd is not None and self.supervisor_pidfd in ready:
                log.warning("the supervisor is gone; stopping")
                break
            if self.channel in ready:
                while True:
                    try:
                        raw = self.channel.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.on_message(raw)
            now = time.monotonic()
            link_readable = self.link.fileno() in ready
            if (link_readable and self.link.read(now)) or (
                not link_readable and self.link.due(now) and self.link.retry(now)
            ):
                self._on_link_change()
            if not self.replica.stale and self.receivers:
                nd_sock, data_sock = self.receivers
                if self.answered in ready:
                    self.drain_answered(FRAMES_PER_TURN)
                if nd_sock.fileno() in ready:
                    self.drain(nd_sock, True, FRAMES_PER_TURN)
                if data_sock.fileno() in ready:
                    # ND first: read it again before each further data batch.
                    self.drain(data_sock, False, FRAMES_PER_TURN)
            now = time.monotonic()
            if not self.replica.stale:
                due = self.engine.next_deadline()
                if due is not None and due <= now:
                    self._handle(self.engine.poll(now))
            self.publish_answers()
            self.flush_learned(now)
            frames = self.answered in ready or any(fd in ready for fd in registered)
            if frames and self.next_beat - now > HEARTBEAT_S:
                self.next_beat = now + HEARTBEAT_S  # busy again: counters go out each second
            self.beat_if_due(now)
            self.check_supervisor(now)
        self.flush_learned(time.monotonic(), force=True)
        return 0

    def check_supervisor(self, now: float) -> None:
        """Note a silent supervisor (a beat unanswered for silence_s): forwarding goes on;
        its next word brings a resync."""
        waiting = self.unanswered_since
        if not self.supervisor_silent and waiting is not None and now - waiting > self.silence_s:
            self.supervisor_silent = True
            self.counters["supervisor_silences"] += 1
            log.warning(
                "no word from the supervisor for %.0f s; forwarding on with the replica",
                now - self.last_heard,
            )

    def _on_link_change(self) -> None:
        state = self.link.state
        log.info(
            "link %s: ifindex %d, up %s, mtu %d", self.interface, state.ifindex, state.up, state.mtu
        )
        self.open_receivers()
        self._sync_own_link()
        self.answer_tables.topology_changed()  # our own MAC may have changed
        self.send("link", interface=self.interface, **state.wire())

    def close(self) -> None:
        self.answerer.close()
        self.close_receivers()
        if self.sender is not None:
            self.sender.close()
        self.link.close()
        self.answered.close(linger=0)
        self.channel.close(linger=500)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portier-worker", description=__doc__)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--neighbor-capacity", type=int, default=16384)
    parser.add_argument("--neighbor-lifetime", type=float, default=600.0)
    parser.add_argument("--per-member-limit", type=int, default=256)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--supervisor-silence",
        type=float,
        default=SUPERVISOR_SILENCE_S,
        help="seconds without word after which the supervisor counts as silent",
    )
    parser.add_argument(
        "--supervisor-pidfd",
        type=int,
        help="a pidfd of the supervisor to watch instead of PDEATHSIG (set by the zygote)",
    )
    args = parser.parse_args(argv)
    logs.configure(f"portier-worker[{args.interface}]", args.log_level)
    if args.supervisor_pidfd is None:
        _die_with_parent()
    worker = Worker(
        args.interface,
        args.endpoint,
        capacity=args.neighbor_capacity,
        lifetime_s=args.neighbor_lifetime,
        per_member_limit=args.per_member_limit,
        silence_s=args.supervisor_silence,
        supervisor_pidfd=args.supervisor_pidfd,
    )

    def stop(signum: int, _frame: object) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return worker.run()
    finally:
        worker.close()


if __name__ == "__main__":
    sys.exit(main())
