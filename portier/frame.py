"""Ethernet + IPv6 framing: parse, build, and locate the upper-layer header.

Extension headers (decided here, once): Hop-by-Hop, Destination Options, Routing,
Fragment and AH are walked to find the upper-layer protocol.  An ICMPv6 ND message behind
Hop-by-Hop or Destination Options is still ND and gets rewritten, with the extension
headers kept byte for byte; one behind a Fragment header is dropped (RFC 6980) and one
behind a Routing header is dropped (no ND message is ever source-routed).  Every other
packet is forwarded untouched whatever its extension headers hold.  Ethernet padding
after the IPv6 payload is cut off; a frame shorter than its IPv6 payload length is
truncated and rejected.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from portier.drops import DropReason, FrameError

# Where things sit in an Ethernet frame carrying IPv6: the one place that says so.  The
# packet path reads frames by these names (slices for the byte strings, offsets for the
# single bytes), never by literal numbers.
ETH_HLEN = 14
IPV6_HLEN = 40
DST_MAC = slice(0, 6)
SRC_MAC = slice(6, 12)
ETHERTYPE = slice(12, 14)
ETHERTYPE_OFFSET = 12  # two bytes
L3_OFFSET = ETH_HLEN
VERSION_OFFSET = L3_OFFSET  # the high nibble
PAYLOAD_LENGTH_OFFSET = L3_OFFSET + 4  # two bytes, big-endian
NEXT_HEADER_OFFSET = L3_OFFSET + 6
HOP_LIMIT_OFFSET = L3_OFFSET + 7
SRC_OFFSET = ETH_HLEN + 8
DST_OFFSET = ETH_HLEN + 24
SRC = slice(SRC_OFFSET, SRC_OFFSET + 16)
DST = slice(DST_OFFSET, DST_OFFSET + 16)
L4_OFFSET = ETH_HLEN + IPV6_HLEN
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_IPV6_BYTES = b"\x86\xdd"

NH_HOP_BY_HOP = 0
NH_TCP = 6
NH_UDP = 17
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_AUTH = 51
NH_ICMPV6 = 58
NH_NONE = 59
NH_DEST_OPTS = 60
EXTENSION_HEADERS = frozenset({NH_HOP_BY_HOP, NH_ROUTING, NH_FRAGMENT, NH_AUTH, NH_DEST_OPTS})
_MAX_EXTENSION_HEADERS = 8

_IPV6_HEADER = struct.Struct("!IHBB16s16s")


@dataclass(frozen=True, slots=True)
class IPv6Header:
    src: bytes
    dst: bytes
    next_header: int
    hop_limit: int
    payload_length: int
    traffic_class: int = 0
    flow_label: int = 0

    def encode(self) -> bytes:
        first = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return _IPV6_HEADER.pack(
            first, self.payload_length, self.next_header, self.hop_limit, self.src, self.dst
        )


@dataclass(frozen=True, slots=True)
class Packet:
    """A parsed Ethernet/IPv6 frame.  `data` is the frame without Ethernet padding."""

    dst_mac: bytes
    src_mac: bytes
    ipv6: IPv6Header
    upper_protocol: int
    upper_offset: int
    data: bytes
    fragmented: bool = False
    routed: bool = False

    @property
    def upper(self) -> bytes:
        return self.data[self.upper_offset :]


def parse_packet(frame: bytes) -> Packet:
    """Parse an Ethernet frame carrying IPv6; raises FrameError with a named reason."""
    if len(frame) < L4_OFFSET:
        raise FrameError(DropReason.FRAME_TOO_SHORT, f"{len(frame)} bytes")
    if frame[12:14] != ETHERTYPE_IPV6_BYTES:
        raise FrameError(DropReason.NOT_IPV6, f"ethertype 0x{frame[12:14].hex()}")
    first, payload_length, next_header, hop_limit, src, dst = _IPV6_HEADER.unpack_from(
        frame, L3_OFFSET
    )
    if first >> 28 != 6:
        raise FrameError(DropReason.BAD_IP_VERSION, f"version {first >> 28}")
    # A jumbogram (RFC 2675, as BIG TCP sends) carries its length in a hop-by-hop option.
    jumbo = is_jumbogram(frame)
    end = len(frame) if jumbo else L4_OFFSET + payload_length
    if end > len(frame):
        raise FrameError(
            DropReason.TRUNCATED,
            f"payload length {payload_length}, {len(frame) - L4_OFFSET} present",
        )
    data = frame[:end] if end < len(frame) else frame
    protocol, offset, fragmented, routed = locate_upper_layer(data, next_header)
    header = IPv6Header(
        src=src,
        dst=dst,
        next_header=next_header,
        hop_limit=hop_limit,
        payload_length=payload_length,
        traffic_class=(first >> 20) & 0xFF,
        flow_label=first & 0xFFFFF,
    )
    return Packet(frame[0:6], frame[6:12], header, protocol, offset, data, fragmented, routed)


def is_jumbogram(frame: bytes) -> bool:
    """Payload length 0 and a Jumbo Payload option first in the hop-by-hop header."""
    return (
        frame[18] == 0
        and frame[19] == 0
        and frame[20] == NH_HOP_BY_HOP
        and len(frame) > L4_OFFSET + 2
        and frame[L4_OFFSET + 2] == 0xC2
    )


def locate_upper_layer(data: bytes, next_header: int) -> tuple[int, int, bool, bool]:
    """Walk extension headers: (protocol, offset in frame, fragmented, routed)."""
    offset = L4_OFFSET
    fragmented = routed = False
    for _ in range(_MAX_EXTENSION_HEADERS + 1):  # the last pass only finds the upper layer
        if next_header not in EXTENSION_HEADERS:
            return next_header, offset, fragmented, routed
        if offset + 8 > len(data):
            raise FrameError(DropReason.BAD_EXTENSION_HEADER, "extension header truncated")
        if next_header == NH_FRAGMENT:
            fragmented = True
            # Only the first fragment carries the upper-layer header.
            if (data[offset + 2] << 8 | data[offset + 3]) & 0xFFF8:
                return NH_NONE, offset + 8, fragmented, routed
            length = 8
        elif next_header == NH_AUTH:
            length = (data[offset + 1] + 2) * 4
        else:
            routed = routed or next_header == NH_ROUTING
            length = (data[offset + 1] + 1) * 8
        next_header = data[offset]
        offset += length
        if offset > len(data):
            raise FrameError(DropReason.BAD_EXTENSION_HEADER, "extension header truncated")
    raise FrameError(DropReason.BAD_EXTENSION_HEADER, "too many extension headers")


def build_frame(dst_mac: bytes, src_mac: bytes, header: IPv6Header, payload: bytes) -> bytes:
    return dst_mac + src_mac + ETHERTYPE_IPV6_BYTES + header.encode() + payload
