"""Multicast NS answered first, from a thread of its own, then relayed by the main loop.

Someone resolving a neighbor waits for one answer.  In the worker's loop that answer
waits for the loop to come back from poll(), go round its other sources and through
the relay's work on the frame; a thread blocked in recv() on a socket of its own is
woken with the frame in hand and does nothing else first.  Measured here, resolution
through the proxy (router's first ping, p50) took 0.22-0.23 ms this way against
0.26-0.33 ms with the answer computed first in the main loop (three A/B runs).

So multicast NS right after the IPv6 header (portier.answers.answers_early: the answer
socket's filter takes just those, the main ND socket's filter leaves them out) come in
here.  The thread answers the ones the proxy answers (portier.answers.EarlyAnswers,
which reads nothing but the frozen table the main loop last published: the thread never
touches the replica the main loop changes), then hands every frame to the main loop
over an inproc socket, saying whether it answered; the main loop relays, learns and
counts as for any ND frame, and answers what the thread did not if it can by then.
While the replica is stale (`hold`), the thread reads nothing: frames wait in the socket
as they do for the main loop.  The main loop sleeps in poll() meanwhile, so the thread
rarely waits for the interpreter lock.  The thread sleeps in poll() on its socket and
an eventfd, with no timeout: an idle worker's thread never wakes, and a new socket, a
hold or a stop wakes it at once through the eventfd (a closed socket does not wake a
blocked recv()).  Its counters are its own (a plain dict only it writes; the heartbeat
copies it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

import zmq

from portier.workers import packetio

log = logging.getLogger("portier.worker")

# The largest IPv6 packet short of a jumbogram, with its Ethernet header: any NS fits
# whatever the MTU; anything longer is counted and dropped, never judged cut short.
FRAME_MAX = 14 + 40 + 0xFFFF
# perf_counter at receipt (for the relay histogram), and whether the thread answered:
# if not, the main loop asks again with what it knows then (the replica may have been
# empty, before the first snapshot).
STAMP = struct.Struct("d?")


class Answerer:
    def __init__(
        self,
        interface: str,
        answer: Callable[[bytes, float], bytes | None],
        context: zmq.Context,
        endpoint: str,
    ) -> None:
        """`answer(frame, now)` gives the NA to send, or None; frames go on to `endpoint`."""
        self.answer = answer
        self.context = context
        self.endpoint = endpoint
        self.sock: socket.socket | None = None
        self.counters: dict[str, int] = {}
        self.stopping = False
        self.held = True  # until the first snapshot
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.thread = threading.Thread(target=self._run, name=f"answer-{interface}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def attach(self, sock: socket.socket | None) -> None:
        """Read `sock` from now on (None: nothing until the next one)."""
        self.sock = sock
        self._wake()

    def hold(self, held: bool) -> None:
        """Read nothing while `held` (the replica is stale); frames wait in the socket."""
        self.held = held
        self._wake()

    def _wake(self) -> None:
        if self._wakeup >= 0:
            os.eventfd_write(self._wakeup, 1)

    def stop(self) -> None:
        self.stopping = True
        self._wake()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop, wait for the thread, and release the eventfd."""
        self.stop()
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        if self._wakeup >= 0 and not self.thread.is_alive():  # one still in poll() keeps it
            os.close(self._wakeup)
            self._wakeup = -1

    def _run(self) -> None:
        relay = self.context.socket(zmq.PUSH)
        relay.setsockopt(zmq.LINGER, 0)
        relay.connect(self.endpoint)
        buffer = packetio.receive_buffer(packetio.VNET_HDR_LEN + FRAME_MAX)
        view = memoryview(buffer)
        poller = select.poll()
        poller.register(self._wakeup, select.POLLIN)
        watched = -1
        try:
            while not self.stopping:
                sock = None if self.held else self.sock
                fd = -1 if sock is None else sock.fileno()
                if fd != watched:
                    if watched >= 0:
                        poller.unregister(watched)
                    if fd >= 0:
                        poller.register(fd, select.POLLIN)
                    watched = fd
                events = poller.poll()  # no timeout: only a frame or _wake() ends it
                if any(ready == self._wakeup for ready, _ in events):
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wakeup)
                    continue  # look at the socket, `held` and `stopping` again
                if sock is None:
                    continue
                try:
                    # MSG_TRUNC: the frame's real size, so that a longer one is seen as such.
                    size = sock.recv_into(buffer, 0, socket.MSG_TRUNC)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    # Closed under us (a new socket follows) or the interface went away.
                    if exc.errno not in (errno.EBADF, errno.ENETDOWN, errno.ENODEV, errno.ENXIO):
                        self._count_error("answer_rx", exc)
                    time.sleep(0.01)
                    continue
                if size > len(buffer) or size <= packetio.VNET_HDR_LEN:
                    self._count("answer_rx_oversized" if size > len(buffer) else "answer_rx_short")
                    continue
                received_at = time.perf_counter()
                header = bytes(view[: packetio.VNET_HDR_LEN])
                frame = bytes(view[packetio.VNET_HDR_LEN : size])
                if header[0] & packetio.VNET_F_NEEDS_CSUM:
                    frame = packetio.complete_checksum(frame, header)
                    header = packetio.ZERO_VNET_HDR
                answered = self._answer(sock, frame)
                try:
                    relay.send_multipart(
                        [header, frame, STAMP.pack(received_at, answered)], zmq.NOBLOCK
                    )
                except zmq.Again:
                    self._count("answer_relay_queue_full")
        finally:
            relay.close()

    def _answer(self, sock: socket.socket, frame: bytes) -> bool:
        """Send the answer to `frame` if the proxy gives one; whether it did."""
        try:
            reply = self.answer(frame, time.monotonic())
        except Exception:  # a bug costs this answer, not the thread
            errors = self._count("answer_errors")
            if errors & (errors - 1) == 0:  # 1, 2, 4, 8, ...
                log.exception("answering an NS failed (%d so far)", errors)
            return False
        if reply is None:
            return False
        try:
            sock.sendmsg([packetio.ZERO_VNET_HDR, reply])
        except OSError as exc:
            self._count_error("answer_tx", exc)
            return False  # the main loop tries again
        return True

    def _count_error(self, what: str, exc: OSError) -> None:
        self._count(f"{what}_{errno.errorcode.get(exc.errno or 0, 'error').lower()}")

    def _count(self, key: str) -> int:
        count = self.counters.get(key, 0) + 1
        self.counters[key] = count
        return count
