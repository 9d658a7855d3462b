"""The Internet checksum (RFC 1071) over an IPv6 pseudo-header (RFC 8200 §8.1).

The ones'-complement sum of 16-bit words equals the big-endian integer of the data
modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF), which lets CPython's big-integer code do
the folding in C.  Every carry is folded: the original implementation folded only once.
"""

from __future__ import annotations

import struct

_PSEUDO_TAIL = struct.Struct("!I3xB")


def ones_complement_sum(data: bytes) -> int:
    """Folded 16-bit ones'-complement sum; 0 only for all-zero data, else 1..0xFFFF."""
    if len(data) & 1:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    if value == 0:
        return 0
    folded = value % 0xFFFF
    return folded or 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, upper_length: int, next_header: int) -> int:
    return ones_complement_sum(src + dst + _PSEUDO_TAIL.pack(upper_length, next_header))


def upper_layer_checksum(src: bytes, dst: bytes, next_header: int, upper: bytes) -> int:
    """Checksum value to store in an ICMPv6/UDP/TCP header whose checksum field is zero."""
    total = ones_complement_sum(src + dst + _PSEUDO_TAIL.pack(len(upper), next_header) + upper)
    return (~total) & 0xFFFF


def verify_upper_layer(src: bytes, dst: bytes, next_header: int, upper: bytes) -> bool:
    """True when the checksum stored inside `upper` is correct (the whole sum is 0xFFFF)."""
    data = src + dst + _PSEUDO_TAIL.pack(len(upper), next_header) + upper
    return ones_complement_sum(data) == 0xFFFF
