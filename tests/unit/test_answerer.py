"""The worker's answer thread, over a datagram socket pair standing in for the packet socket."""

import socket
import struct
import time
from pathlib import Path

import pytest
import zmq

from portier.workers import packetio
from portier.workers.answerer import FRAME_MAX, STAMP, Answerer

NS = b"ns-frame-" + bytes(70)
BROKEN = b"makes-the-replica-raise"


@pytest.fixture
def rig(request):
    """An answerer reading one end of a socket pair; the test plays the wire at the other.

    With the parameter True (indirect), it stays held, as a worker's is before its first
    snapshot.
    """
    context = zmq.Context()
    relay = context.socket(zmq.PULL)
    relay.bind("inproc://answered-test")
    relay.setsockopt(zmq.RCVTIMEO, 5000)

    def answer(frame: bytes, now: float) -> bytes | None:
        if frame == BROKEN:
            raise RuntimeError("dictionary changed size during iteration")
        return b"na-for-" + frame[:9] if frame.startswith(b"ns-") else None

    wire, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    inside.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100_000))
    wire.settimeout(5)
    answerer = Answerer("vm1", answer, context, "inproc://answered-test")
    answerer.start()
    answerer.attach(inside)
    if not getattr(request, "param", False):
        answerer.hold(False)
    yield answerer, wire, relay
    answerer.close(timeout_s=5)
    assert not answerer.thread.is_alive(), "the thread did not stop"
    for sock in (wire, inside):
        sock.close()
    relay.close(linger=0)
    context.term()


def test_answers_first_then_hands_every_frame_on(rig):
    _, wire, relay = rig
    wire.send(packetio.ZERO_VNET_HDR + NS)
    assert wire.recv(4096) == packetio.ZERO_VNET_HDR + b"na-for-ns-frame-"
    header, frame, stamp = relay.recv_multipart()
    assert (header, frame, STAMP.unpack(stamp)[1]) == (packetio.ZERO_VNET_HDR, NS, True)
    # Not ours to answer: handed on all the same, marked unanswered.
    wire.send(packetio.ZERO_VNET_HDR + b"other" + bytes(70))
    _, frame, stamp = relay.recv_multipart()
    assert frame.startswith(b"other") and STAMP.unpack(stamp)[1] is False


def test_a_failing_answer_costs_the_answer_not_the_thread(rig):
    answerer, wire, relay = rig
    wire.send(packetio.ZERO_VNET_HDR + BROKEN)
    _, frame, stamp = relay.recv_multipart()
    assert frame == BROKEN and STAMP.unpack(stamp)[1] is False
    assert answerer.counters["answer_errors"] == 1
    wire.send(packetio.ZERO_VNET_HDR + NS)  # still answering
    assert wire.recv(4096).endswith(b"na-for-ns-frame-")


def _naive_sum(data: bytes) -> int:
    """RFC 1071 the slow way, written out here: 16-bit words, every carry folded back."""
    data += bytes(len(data) % 2)
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_a_partial_checksum_is_completed_before_answering(rig):
    """As veth hands it over: the checksum field holds only the pseudo-header's sum."""
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import Ether

    _, wire, relay = rig
    src, dst = "fe80::1", "ff02::1:ff00:101"
    whole = bytes(
        Ether(dst="33:33:ff:00:01:01", src="52:54:00:00:00:01")
        / IPv6(src=src, dst=dst, hlim=255)
        / ICMPv6ND_NS(tgt="2001:db8:1::101")
        / ICMPv6NDOptSrcLLAddr(lladdr="52:54:00:00:00:01")
    )
    icmp_length = len(whole) - 54
    pseudo = _naive_sum(
        socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + icmp_length.to_bytes(4, "big")
        + bytes([0, 0, 0, 58])
    )
    partial = whole[:56] + pseudo.to_bytes(2, "big") + whole[58:]
    assert partial != whole
    # csum_start 54, csum_offset 2: where the ICMPv6 checksum starts and sits.
    wire.send(packetio.VNET_HDR.pack(packetio.VNET_F_NEEDS_CSUM, 0, 0, 0, 54, 2) + partial)
    header, frame, _ = relay.recv_multipart()
    assert header == packetio.ZERO_VNET_HDR
    assert frame == whole  # scapy's checksum


def test_an_oversized_frame_is_counted_and_dropped_not_judged(rig):
    answerer, wire, relay = rig
    wire.send(packetio.ZERO_VNET_HDR + NS + bytes(FRAME_MAX))
    wire.send(packetio.ZERO_VNET_HDR + b"other" + bytes(70))
    _, frame, _ = relay.recv_multipart()
    assert frame.startswith(b"other"), "the oversized frame was handed on"
    assert answerer.counters["answer_rx_oversized"] == 1
    wire.settimeout(0.2)
    with pytest.raises(TimeoutError):
        wire.recv(4096)  # and it was not answered either


@pytest.mark.parametrize("rig", [True], indirect=True)
def test_held_it_reads_nothing_and_frames_wait_in_the_socket(rig):
    """Before the first snapshot (and while the replica is stale) the thread neither
    answers nor hands anything on; the frame waits in the socket."""
    answerer, wire, relay = rig
    assert answerer.held
    wire.send(packetio.ZERO_VNET_HDR + NS)
    relay.setsockopt(zmq.RCVTIMEO, 1500)
    with pytest.raises(zmq.Again):
        relay.recv_multipart()
    wire.settimeout(0.1)
    with pytest.raises(TimeoutError):
        wire.recv(4096)
    answerer.hold(False)  # the snapshot came: the waiting frame is answered now
    wire.settimeout(5)
    assert wire.recv(4096).endswith(b"na-for-ns-frame-")


def _voluntary_switches(thread_id: int) -> int:
    status = Path(f"/proc/self/task/{thread_id}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("voluntary_ctxt_switches:"))
    return int(line.split()[1])


def test_an_idle_thread_never_wakes_and_a_new_socket_wakes_it_at_once(rig):
    """No receive timeout: with nothing arriving, the thread stays asleep in poll()
    (a worker per interface, hundreds of them, each waking each second, is the idle
    proxy's CPU).  A socket attached meanwhile is read at once all the same."""
    answerer, wire, relay = rig
    wire.send(packetio.ZERO_VNET_HDR + NS)
    relay.recv_multipart()  # the thread is running, and now goes back to sleep
    thread_id = answerer.thread.native_id
    assert thread_id is not None
    before = _voluntary_switches(thread_id)
    time.sleep(2.5)  # the window observed, not a wait for an event
    assert _voluntary_switches(thread_id) - before == 0, "the idle thread woke up"
    wire2, inside2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        answerer.attach(inside2)
        wire2.settimeout(5)
        started = time.monotonic()
        wire2.send(packetio.ZERO_VNET_HDR + NS)
        assert wire2.recv(4096).endswith(b"na-for-ns-frame-")
        _, frame, _ = relay.recv_multipart()
        assert frame == NS
        # Generous on a loaded machine, and still below the one-second timeout it had.
        assert time.monotonic() - started < 0.9
    finally:
        answerer.attach(None)
        wire2.close()
        inside2.close()
