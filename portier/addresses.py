"""Link-layer (EUI-48) and IPv6 address helpers.

Addresses travel through the core as `bytes` (6 or 16 long) because they are compared
and hashed on the packet path; text forms exist only at the edges (config, control,
logs).  Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re

MAC_LEN = 6
IPV6_LEN = 16
UNSPECIFIED = bytes(IPV6_LEN)
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
ALL_ROUTERS = ipaddress.IPv6Address("ff02::2").packed
_SOLICITED_NODE_PREFIX = bytes.fromhex("ff0200000000000000000001ff")
_MAC_TEXT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_EUI64_TEXT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){7}")


class AddressError(ValueError):
    """A textual address that does not parse."""


def parse_mac(text: str) -> bytes:
    """Parse `aa:bb:cc:dd:ee:ff` (exactly six two-digit groups, any case)."""
    if not isinstance(text, str) or not _MAC_TEXT.fullmatch(text):
        raise AddressError(f"not an EUI-48 address: {text!r}")
    return bytes.fromhex(text.replace(":", ""))


def parse_eui64(text: str) -> bytes:
    if not isinstance(text, str) or not _EUI64_TEXT.fullmatch(text):
        raise AddressError(f"not an EUI-64 address: {text!r}")
    return bytes.fromhex(text.replace(":", ""))


def format_mac(mac: bytes) -> str:
    return mac.hex(":")


def mac_is_multicast(mac: bytes) -> bool:
    return bool(mac[0] & 0x01)


def mac_is_unicast(mac: bytes) -> bool:
    return not mac[0] & 0x01


def mac_is_broadcast(mac: bytes) -> bool:
    return mac == b"\xff" * len(mac)


def mac_is_local(mac: bytes) -> bool:
    """Locally administered (U/L bit set); broadcast counts as local."""
    return bool(mac[0] & 0x02)


def parse_ipv6(text: str) -> bytes:
    try:
        return ipaddress.IPv6Address(text).packed
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise AddressError(f"not an IPv6 address: {text!r}") from exc


def format_ipv6(address: bytes) -> str:
    return str(ipaddress.IPv6Address(address))


def is_unspecified(address: bytes) -> bool:
    return address == UNSPECIFIED


def is_multicast(address: bytes) -> bool:
    return address[0] == 0xFF


def is_link_local(address: bytes) -> bool:
    """fe80::/10."""
    return address[0] == 0xFE and (address[1] & 0xC0) == 0x80


def solicited_node(address: bytes) -> bytes:
    """The solicited-node multicast group ff02::1:ffXX:XXXX of a unicast address."""
    return _SOLICITED_NODE_PREFIX + address[13:16]


def is_solicited_node(group: bytes) -> bool:
    return group[:13] == _SOLICITED_NODE_PREFIX


def is_solicited_node_of(group: bytes, address: bytes) -> bool:
    return group[:13] == _SOLICITED_NODE_PREFIX and group[13:] == address[13:]


def multicast_mac(address: bytes) -> bytes:
    """RFC 2464 §7: 33:33 followed by the low 32 bits of the IPv6 address."""
    return b"\x33\x33" + address[12:16]


def in_prefix(address: bytes, prefix: bytes, length: int) -> bool:
    """True when the first `length` bits of `address` equal those of `prefix`."""
    whole, rest = divmod(length, 8)
    if address[:whole] != prefix[:whole]:
        return False
    if not rest:
        return True
    mask = (0xFF << (8 - rest)) & 0xFF
    return (address[whole] & mask) == (prefix[whole] & mask)
