"""Packet sockets on one interface: receive with kernel filters, send by ifindex.

Two receive sockets per interface, each with a classic BPF filter: one takes ND
(ICMPv6 types 133-137 right after the IPv6 header), the other every other IPv6 frame;
and a third, blocking, for the answer thread (answerer.py): multicast NS only.
The worker reads the ND socket first, so a data flood fills the data socket's buffer,
not ND's.  Both are bound to ETH_P_IPV6, which the kernel delivers on the receive path
only: the proxy never reads back what it sent.  Every filter first refuses frames the
kernel marked PACKET_OTHERHOST: that is how a frame of a VLAN the host has no
sub-interface for arrives (the kernel takes the 802.1Q/802.1ad tag off, finds no VLAN
device, marks the frame and still delivers it), so without this a tagged RA on a trunk
would reach the untagged guests.  Frames for other MACs are marked so too, and were
never the proxy's.  (A priority tag, VLAN 0, is untagged to the kernel and to us.)
All-multicast reception comes from a PACKET_MR_ALLMULTI membership, which the kernel
drops when the socket closes, so the interface is restored on any exit, crash included.

PACKET_VNET_HDR puts a virtio_net_hdr before each frame: senders such as veth and tap
hand over TCP/UDP with the checksum left partial and GRO/GSO super-frames larger than the
MTU.  A data frame's header is passed through to the egress socket unchanged, so the
kernel finishes the checksum and segments on the way out; an ND frame with a partial
checksum is completed here before validation.
"""

from __future__ import annotations

import ctypes
import mmap
import socket
import struct

from portier.checksum import ones_complement_sum

ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_VNET_HDR = 15
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
VNET_F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
# GSO frames reach 64 KiB by default and about 180 KiB with BIG TCP (gso_max_size).
RECV_BUFFER_BYTES = VNET_HDR_LEN + 512 * 1024
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def receive_buffer(size: int) -> mmap.mmap:
    """A writable buffer whose pages the kernel provides when first written.

    A bytearray of the same size is zeroed at once: 512 KiB of private memory in every
    worker, though almost every frame is a few hundred bytes.
    """
    return mmap.mmap(-1, size)


def bpf_program(program: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(struct.pack("HBBI", *insn) for insn in program)


# Classic BPF opcodes used below.
LDW_ABS, _LDH_ABS, _LDB_ABS = 0x20, 0x28, 0x30
JEQ, _JGE, _JGT, RET = 0x15, 0x35, 0x25, 0x06
ACCEPT = 0xFFFFFFFF  # snap length: whole frames, BIG TCP super-frames included
_SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE
PACKET_OTHERHOST = 3


def _untagged(program: list[tuple[int, int, int, int]]) -> bytes:
    """`program`, for frames of this link's own untagged traffic (see above)."""
    guard = [(LDW_ABS, 0, 0, _SKF_AD_PKTTYPE), (JEQ, 0, 1, PACKET_OTHERHOST), (RET, 0, 0, 0)]
    return bpf_program(guard + program)


ND_FILTER = _untagged(
    [
        (_LDH_ABS, 0, 0, 12),
        (JEQ, 0, 6, ETH_P_IPV6),
        (_LDB_ABS, 0, 0, 20),
        (JEQ, 0, 4, 58),
        (_LDB_ABS, 0, 0, 54),
        (_JGE, 0, 2, 133),
        (_JGT, 1, 0, 137),
        (RET, 0, 0, ACCEPT),
        (RET, 0, 0, 0),
    ]
)
# ND as above, less the multicast NS the answer socket takes (ANSWER_FILTER below).
ND_UNANSWERED_FILTER = _untagged(
    [
        (_LDH_ABS, 0, 0, 12),
        (JEQ, 0, 10, ETH_P_IPV6),
        (_LDB_ABS, 0, 0, 20),
        (JEQ, 0, 8, 58),
        (_LDB_ABS, 0, 0, 54),
        (_JGE, 0, 6, 133),
        (_JGT, 5, 0, 137),
        (JEQ, 0, 3, 135),
        (_LDB_ABS, 0, 0, 38),
        (JEQ, 0, 1, 0xFF),
        (RET, 0, 0, 0),
        (RET, 0, 0, ACCEPT),
        (RET, 0, 0, 0),
    ]
)
DATA_FILTER = _untagged(
    [
        (_LDH_ABS, 0, 0, 12),
        (JEQ, 0, 7, ETH_P_IPV6),
        (_LDB_ABS, 0, 0, 20),
        (JEQ, 0, 4, 58),
        (_LDB_ABS, 0, 0, 54),
        (_JGE, 0, 2, 133),
        (_JGT, 1, 0, 137),
        (RET, 0, 0, 0),
        (RET, 0, 0, ACCEPT),
        (RET, 0, 0, 0),
    ]
)


# A multicast NS right after the IPv6 header: what the answer thread reads
# (portier.answers.answers_early says the same of a frame).
ANSWER_FILTER = _untagged(
    [
        (_LDH_ABS, 0, 0, 12),
        (JEQ, 0, 7, ETH_P_IPV6),
        (_LDB_ABS, 0, 0, 20),
        (JEQ, 0, 5, 58),
        (_LDB_ABS, 0, 0, 54),
        (JEQ, 0, 3, 135),
        (_LDB_ABS, 0, 0, 38),
        (JEQ, 0, 1, 0xFF),
        (RET, 0, 0, ACCEPT),
        (RET, 0, 0, 0),
    ]
)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _allmulti(sock: socket.socket, ifindex: int) -> None:
    mreq = struct.pack("iHH8s", ifindex, PACKET_MR_ALLMULTI, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)


def open_receiver(ifname: str, ifindex: int, program: bytes) -> socket.socket:
    """A non-blocking receive socket on one interface with the given filter.

    Made with protocol 0, it receives nothing until bind() names the protocol: a socket
    made with ETH_P_IPV6 receives from every interface at once, and binding it to one
    waits for the kernel to take that hook down again (an RCU grace period: 8-20 ms
    measured here, per socket, three per worker start).
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        # Filter first, then bind: nothing unfiltered is ever queued.
        attach_filter(sock, program)
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        sock.bind((ifname, ETH_P_IPV6))
        _allmulti(sock, ifindex)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def open_answer_socket(ifname: str, ifindex: int) -> socket.socket:
    """A non-blocking receiver of multicast NS, which also sends the answers."""
    return open_receiver(ifname, ifindex, ANSWER_FILTER)


def open_sender() -> socket.socket:
    """A send-only socket for every interface (protocol 0, unbound: it receives nothing;
    each send names its egress)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def complete_checksum(frame: bytes, header: bytes) -> bytes:
    """Finish a checksum the sender left partial (the field holds the pseudo-header sum).

    `header` is the frame's virtio_net_hdr; csum_start counts from the Ethernet header.
    """
    _flags, _gso, _hdr_len, _gso_size, start, offset = VNET_HDR.unpack(header)
    field = start + offset
    if field + 2 > len(frame) or start >= len(frame):
        return frame
    checksum = (~ones_complement_sum(frame[start:])) & 0xFFFF
    return frame[:field] + checksum.to_bytes(2, "big") + frame[field + 2 :]


def segment_bytes(frame: bytes, header: bytes) -> int:
    """IPv6 length of each segment of a GSO super-frame (0 for an ordinary frame)."""
    flags, gso_type, _hdr_len, gso_size, csum_start, _offset = VNET_HDR.unpack(header)
    gso_type &= 0x7F
    if gso_type == GSO_NONE or not gso_size:
        return 0
    l4 = csum_start if flags & VNET_F_NEEDS_CSUM and csum_start else 54
    if gso_type == GSO_TCPV6 and l4 + 13 <= len(frame):
        l4_header = (frame[l4 + 12] >> 4) * 4
    else:
        l4_header = 8
    return l4 - 14 + l4_header + gso_size


def drops(sock: socket.socket) -> int:
    """Frames the kernel dropped on this socket since the last call (PACKET_STATISTICS)."""
    try:
        _packets, dropped = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    except OSError:
        return 0
    return dropped
