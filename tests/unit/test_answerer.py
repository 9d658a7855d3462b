"""The worker's answer thread, over a datagram socket pair standing in for the packet socket."""

import socket
import struct

import pytest
import zmq

from portier.workers import packetio
from portier.workers.answerer import STAMP, Answerer

NS = b"ns-frame-" + bytes(70)
BROKEN = b"makes-the-replica-raise"


@pytest.fixture
def rig():
    """An answerer reading one end of a socket pair; the test plays the wire at the other."""
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
    yield answerer, wire, relay
    answerer.stop()
    answerer.thread.join(5)
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


def test_a_partial_checksum_is_completed_before_answering(rig):
    _, wire, relay = rig
    # csum_start 54, csum_offset 2: the ICMPv6 checksum field holds the pseudo-header sum.
    header = packetio.VNET_HDR.pack(packetio.VNET_F_NEEDS_CSUM, 0, 0, 0, 54, 2)
    wire.send(header + NS)
    header, frame, _ = relay.recv_multipart()
    assert header == packetio.ZERO_VNET_HDR
    assert frame == packetio.complete_checksum(NS, packetio.VNET_HDR.pack(1, 0, 0, 0, 54, 2))
