"""RFC 4389 §4.1.2 and §4.1.3 rewriting of a frame for its egress interface.

Only these bytes ever change: the Ethernet addresses; in ND messages, every 6-byte
unicast Source/Target Link-Layer Address option (it now names the egress interface),
the RA Proxy flag, and the ICMPv6 checksum.  The hop limit is never touched.  A
link-layer option of another size (another link type) is left alone.
"""

from __future__ import annotations

from portier.checksum import ones_complement_sum
from portier.frame import DST_OFFSET, SRC_OFFSET
from portier.ndmsg import MIN_LENGTH, RA_FLAG_PROXY, RA_FLAGS_OFFSET, NDType

_LINK_LAYER_OPTIONS = (1, 2)
_ICMPV6 = b"\x00\x00\x00\x3a"


def rewrite_nd(frame: bytes, icmp_offset: int, egress_mac: bytes, dst_mac: bytes) -> bytes:
    """A validated ND frame rewritten for the egress interface, checksum recomputed."""
    out = bytearray(frame)
    out[0:6] = dst_mac
    out[6:12] = egress_mac
    kind = out[icmp_offset]
    if kind == NDType.ROUTER_ADVERTISEMENT:
        out[icmp_offset + RA_FLAGS_OFFSET] |= RA_FLAG_PROXY
    offset = icmp_offset + MIN_LENGTH[kind]
    end = len(out)
    while offset + 8 <= end:
        units = out[offset + 1]
        if units == 0:
            break  # cannot happen after validation; never loop forever
        if units == 1 and out[offset] in _LINK_LAYER_OPTIONS and not out[offset + 2] & 1:
            out[offset + 2 : offset + 8] = egress_mac
        offset += units * 8
    out[icmp_offset + 2 : icmp_offset + 4] = b"\x00\x00"
    length = end - icmp_offset
    total = ones_complement_sum(
        bytes(out[SRC_OFFSET : DST_OFFSET + 16])
        + length.to_bytes(4, "big")
        + _ICMPV6
        + bytes(out[icmp_offset:])
    )
    checksum = (~total) & 0xFFFF
    out[icmp_offset + 2] = checksum >> 8
    out[icmp_offset + 3] = checksum & 0xFF
    return bytes(out)
