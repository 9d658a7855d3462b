"""ICMPv6 Neighbor Discovery messages and options (RFC 4861, RFC 8106): parse and build.

Message and option layouts are declared as tables; one generic path parses and one
builds.  Every option survives a parse/encode round trip byte for byte: options of a
type we do not interpret, and known types with a size we cannot interpret, are kept as
`RawOption`.  Parsing raises `FrameError`, never anything else, whatever the input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import IntEnum

from portier.checksum import upper_layer_checksum
from portier.drops import DropReason, FrameError
from portier.frame import NH_ICMPV6


class NDType(IntEnum):
    ROUTER_SOLICITATION = 133
    ROUTER_ADVERTISEMENT = 134
    NEIGHBOR_SOLICITATION = 135
    NEIGHBOR_ADVERTISEMENT = 136
    REDIRECT = 137


class OptionType(IntEnum):
    SOURCE_LINK_LAYER = 1
    TARGET_LINK_LAYER = 2
    PREFIX_INFORMATION = 3
    REDIRECTED_HEADER = 4
    MTU = 5
    RDNSS = 25
    DNSSL = 31


# Fixed part of each message, in bytes (RFC 4861 §4).
MIN_LENGTH = {133: 8, 134: 16, 135: 24, 136: 24, 137: 40}

RA_FLAG_MANAGED = 0x80
RA_FLAG_OTHER = 0x40
RA_FLAG_PROXY = 0x04
NA_FLAG_ROUTER = 0x80
NA_FLAG_SOLICITED = 0x40
NA_FLAG_OVERRIDE = 0x20
PI_FLAG_ON_LINK = 0x80
PI_FLAG_AUTONOMOUS = 0x40
# Offsets within the ICMPv6 message.
CODE_OFFSET = 1
CHECKSUM_OFFSET = 2  # two bytes
RA_FLAGS_OFFSET = 5
NA_FLAGS_OFFSET = 4
TARGET_OFFSET = 8  # NS and NA: the 16-byte target address


# --- options -------------------------------------------------------------------------


def _pad(body: bytes) -> bytes:
    """Pad an option body (type and length bytes excluded) to a multiple of 8 overall."""
    return body + bytes(-(len(body) + 2) % 8)


def _header(option_type: int, body: bytes) -> bytes:
    return bytes((option_type, (len(body) + 2) // 8)) + body


@dataclass(frozen=True, slots=True)
class LinkLayerAddressOption:
    """SLLA (type 1) or TLLA (type 2); `address` is the option data, padding included."""

    type: int
    address: bytes

    def encode(self) -> bytes:
        return _header(self.type, _pad(self.address))


@dataclass(frozen=True, slots=True)
class PrefixInformation:
    prefix_length: int
    flags: int
    valid_lifetime_s: int
    preferred_lifetime_s: int
    prefix: bytes
    reserved: int = 0
    type: int = OptionType.PREFIX_INFORMATION

    _BODY = struct.Struct("!BBIII16s")

    @property
    def on_link(self) -> bool:
        return bool(self.flags & PI_FLAG_ON_LINK)

    @property
    def autonomous(self) -> bool:
        return bool(self.flags & PI_FLAG_AUTONOMOUS)

    def encode(self) -> bytes:
        return _header(
            self.type,
            self._BODY.pack(
                self.prefix_length,
                self.flags,
                self.valid_lifetime_s,
                self.preferred_lifetime_s,
                self.reserved,
                self.prefix,
            ),
        )

    @classmethod
    def decode(cls, body: bytes) -> PrefixInformation:
        length, flags, valid, preferred, reserved, prefix = cls._BODY.unpack(body)
        return cls(length, flags, valid, preferred, prefix, reserved)


@dataclass(frozen=True, slots=True)
class RedirectedHeader:
    """The leading part of the redirected packet, padding included."""

    packet: bytes
    reserved: int = 0
    type: int = OptionType.REDIRECTED_HEADER

    def encode(self) -> bytes:
        return _header(self.type, _pad(self.reserved.to_bytes(6, "big") + self.packet))

    @classmethod
    def decode(cls, body: bytes) -> RedirectedHeader:
        return cls(body[6:], int.from_bytes(body[:6], "big"))


@dataclass(frozen=True, slots=True)
class MtuOption:
    mtu: int
    reserved: int = 0
    type: int = OptionType.MTU

    def encode(self) -> bytes:
        return _header(self.type, struct.pack("!HI", self.reserved, self.mtu))

    @classmethod
    def decode(cls, body: bytes) -> MtuOption:
        reserved, mtu = struct.unpack("!HI", body)
        return cls(mtu, reserved)


@dataclass(frozen=True, slots=True)
class RecursiveDnsServers:
    lifetime_s: int
    servers: tuple[bytes, ...]
    reserved: int = 0
    type: int = OptionType.RDNSS

    def encode(self) -> bytes:
        return _header(
            self.type, struct.pack("!HI", self.reserved, self.lifetime_s) + b"".join(self.servers)
        )

    @classmethod
    def decode(cls, body: bytes) -> RecursiveDnsServers:
        reserved, lifetime = struct.unpack_from("!HI", body)
        servers = tuple(body[i : i + 16] for i in range(6, len(body), 16))
        return cls(lifetime, servers, reserved)


@dataclass(frozen=True, slots=True)
class DnsSearchList:
    """Domain names in DNS wire format, padding included (RFC 8106 §5.2)."""

    lifetime_s: int
    encoded_domains: bytes
    reserved: int = 0
    type: int = OptionType.DNSSL

    def encode(self) -> bytes:
        return _header(
            self.type,
            _pad(struct.pack("!HI", self.reserved, self.lifetime_s) + self.encoded_domains),
        )

    @classmethod
    def decode(cls, body: bytes) -> DnsSearchList:
        reserved, lifetime = struct.unpack_from("!HI", body)
        return cls(lifetime, body[6:], reserved)

    def domains(self) -> list[str]:
        names: list[str] = []
        labels: list[str] = []
        data = self.encoded_domains
        i = 0
        while i < len(data):
            size = data[i]
            i += 1
            if size == 0:
                if labels:
                    names.append(".".join(labels))
                    labels = []
                continue
            labels.append(data[i : i + size].decode("ascii", "replace"))
            i += size
        return names


@dataclass(frozen=True, slots=True)
class RawOption:
    """An option kept as it came: unknown type, or a known type of unusable size."""

    type: int
    data: bytes

    def encode(self) -> bytes:
        return _header(self.type, _pad(self.data))


Option = (
    LinkLayerAddressOption
    | PrefixInformation
    | RedirectedHeader
    | MtuOption
    | RecursiveDnsServers
    | DnsSearchList
    | RawOption
)


def _decode_option(option_type: int, units: int, body: bytes) -> Option:
    if option_type in (OptionType.SOURCE_LINK_LAYER, OptionType.TARGET_LINK_LAYER):
        return LinkLayerAddressOption(option_type, body)
    if option_type == OptionType.PREFIX_INFORMATION and units == 4:
        return PrefixInformation.decode(body)
    if option_type == OptionType.REDIRECTED_HEADER:
        return RedirectedHeader.decode(body)
    if option_type == OptionType.MTU and units == 1:
        return MtuOption.decode(body)
    if option_type == OptionType.RDNSS and units >= 3 and units % 2 == 1:
        return RecursiveDnsServers.decode(body)
    if option_type == OptionType.DNSSL and units >= 2:
        return DnsSearchList.decode(body)
    return RawOption(option_type, body)


def iter_option_spans(message: bytes, start: int) -> Iterator[tuple[int, int, int]]:
    """Yield (type, offset, length in bytes) for each option; FrameError on bad framing."""
    offset = start
    end = len(message)
    while offset < end:
        if offset + 2 > end:
            raise FrameError(DropReason.TRUNCATED_OPTION, f"option header at {offset}")
        units = message[offset + 1]
        if units == 0:
            raise FrameError(DropReason.ZERO_LENGTH_OPTION, f"option type {message[offset]}")
        length = units * 8
        if offset + length > end:
            raise FrameError(DropReason.TRUNCATED_OPTION, f"option type {message[offset]}")
        yield message[offset], offset, length
        offset += length


def parse_options(message: bytes, start: int) -> tuple[Option, ...]:
    return tuple(
        _decode_option(kind, length // 8, message[offset + 2 : offset + length])
        for kind, offset, length in iter_option_spans(message, start)
    )


# --- messages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouterSolicitation:
    options: tuple[Option, ...] = ()
    reserved: int = 0
    code: int = 0
    checksum: int = 0
    type: int = field(default=NDType.ROUTER_SOLICITATION, init=False)

    def fixed(self) -> bytes:
        return struct.pack("!I", self.reserved)


@dataclass(frozen=True, slots=True)
class RouterAdvertisement:
    cur_hop_limit: int = 64
    flags: int = 0
    router_lifetime_s: int = 1800
    reachable_time_ms: int = 0
    retrans_timer_ms: int = 0
    options: tuple[Option, ...] = ()
    code: int = 0
    checksum: int = 0
    type: int = field(default=NDType.ROUTER_ADVERTISEMENT, init=False)

    @property
    def proxy(self) -> bool:
        return bool(self.flags & RA_FLAG_PROXY)

    def fixed(self) -> bytes:
        return struct.pack(
            "!BBHII",
            self.cur_hop_limit,
            self.flags,
            self.router_lifetime_s,
            self.reachable_time_ms,
            self.retrans_timer_ms,
        )


@dataclass(frozen=True, slots=True)
class NeighborSolicitation:
    target: bytes
    options: tuple[Option, ...] = ()
    reserved: int = 0
    code: int = 0
    checksum: int = 0
    type: int = field(default=NDType.NEIGHBOR_SOLICITATION, init=False)

    def fixed(self) -> bytes:
        return struct.pack("!I16s", self.reserved, self.target)


@dataclass(frozen=True, slots=True)
class NeighborAdvertisement:
    target: bytes
    flags: int = 0
    options: tuple[Option, ...] = ()
    reserved: int = 0
    code: int = 0
    checksum: int = 0
    type: int = field(default=NDType.NEIGHBOR_ADVERTISEMENT, init=False)

    @property
    def router(self) -> bool:
        return bool(self.flags & NA_FLAG_ROUTER)

    @property
    def solicited(self) -> bool:
        return bool(self.flags & NA_FLAG_SOLICITED)

    @property
    def override(self) -> bool:
        return bool(self.flags & NA_FLAG_OVERRIDE)

    def fixed(self) -> bytes:
        return struct.pack("!I16s", (self.flags << 24) | self.reserved, self.target)


@dataclass(frozen=True, slots=True)
class Redirect:
    target: bytes
    destination: bytes
    options: tuple[Option, ...] = ()
    reserved: int = 0
    code: int = 0
    checksum: int = 0
    type: int = field(default=NDType.REDIRECT, init=False)

    def fixed(self) -> bytes:
        return struct.pack("!I16s16s", self.reserved, self.target, self.destination)


NDMessage = (
    RouterSolicitation
    | RouterAdvertisement
    | NeighborSolicitation
    | NeighborAdvertisement
    | Redirect
)


def _parse_fixed(kind: int, message: bytes, options: tuple[Option, ...], code: int, checksum: int):
    if kind == NDType.ROUTER_SOLICITATION:
        (reserved,) = struct.unpack_from("!I", message, 4)
        return RouterSolicitation(options, reserved, code, checksum)
    if kind == NDType.ROUTER_ADVERTISEMENT:
        hop, flags, lifetime, reachable, retrans = struct.unpack_from("!BBHII", message, 4)
        return RouterAdvertisement(
            hop, flags, lifetime, reachable, retrans, options, code, checksum
        )
    if kind == NDType.NEIGHBOR_SOLICITATION:
        reserved, target = struct.unpack_from("!I16s", message, 4)
        return NeighborSolicitation(target, options, reserved, code, checksum)
    if kind == NDType.NEIGHBOR_ADVERTISEMENT:
        word, target = struct.unpack_from("!I16s", message, 4)
        return NeighborAdvertisement(target, word >> 24, options, word & 0xFFFFFF, code, checksum)
    reserved, target, destination = struct.unpack_from("!I16s16s", message, 4)
    return Redirect(target, destination, options, reserved, code, checksum)


def parse_nd(message: bytes) -> NDMessage:
    """Parse an ICMPv6 ND message (the bytes from the ICMPv6 type field to the end)."""
    if not message:
        raise FrameError(DropReason.MESSAGE_TOO_SHORT, "empty message")
    kind = message[0]
    minimum = MIN_LENGTH.get(kind)
    if minimum is None:
        raise FrameError(DropReason.NOT_ND_MESSAGE, f"ICMPv6 type {kind}")
    if len(message) < minimum:
        raise FrameError(DropReason.MESSAGE_TOO_SHORT, f"{len(message)} < {minimum} bytes")
    options = parse_options(message, minimum)
    checksum = message[2] << 8 | message[3]
    return _parse_fixed(kind, message, options, message[1], checksum)


def encode_nd(message: NDMessage, src: bytes | None = None, dst: bytes | None = None) -> bytes:
    """Serialize; with src and dst the checksum is computed, else `message.checksum` is kept."""
    body = message.fixed() + b"".join(option.encode() for option in message.options)
    head = bytes((message.type, message.code))
    if src is None or dst is None:
        return head + message.checksum.to_bytes(2, "big") + body
    checksum = upper_layer_checksum(src, dst, NH_ICMPV6, head + b"\x00\x00" + body)
    return head + checksum.to_bytes(2, "big") + body


def with_checksum(message: NDMessage, src: bytes, dst: bytes) -> NDMessage:
    """The same message with its checksum computed for the given addresses."""
    encoded = encode_nd(message, src, dst)
    return replace(message, checksum=encoded[2] << 8 | encoded[3])
