"""Scapy as an independent oracle for Portier's ND codec, validation and rewriting.

Every ND message type is crossed with every option kind:
- frames scapy builds parse to the field values scapy was given, and validate;
- frames Portier builds dissect in scapy to the same layers and fields, with a checksum
  scapy agrees with;
- options Portier does not interpret survive parse -> encode byte for byte;
- RFC 4389 rewriting keeps the frame valid for scapy and changes only the bytes it may.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptAdvInterval,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptRedirectedHdr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    in6_chksum,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import Ether
from scapy.packet import NoPayload, Packet

from portier.addresses import parse_ipv6, parse_mac
from portier.drops import DropReason, FrameError
from portier.frame import IPv6Header, build_frame, parse_packet
from portier.ndmsg import (
    DnsSearchList,
    LinkLayerAddressOption,
    MtuOption,
    NDMessage,
    NeighborAdvertisement,
    NeighborSolicitation,
    Option,
    PrefixInformation,
    RawOption,
    RecursiveDnsServers,
    Redirect,
    RedirectedHeader,
    RouterAdvertisement,
    RouterSolicitation,
    encode_nd,
    parse_nd,
)
from portier.rewrite import rewrite_nd
from portier.validation import validate_nd

SENDER_MAC = "52:54:00:00:01:01"
RECEIVER_MAC = "52:54:00:00:01:02"
EGRESS_MAC = "02:00:00:00:00:99"
NEXT_HOP_MAC = "52:54:00:00:02:02"
MULTICAST_LLA = "33:33:00:00:00:01"

ND_LAYERS = (ICMPv6ND_RS, ICMPv6ND_RA, ICMPv6ND_NS, ICMPv6ND_NA, ICMPv6ND_Redirect)
LLA_LAYERS = (ICMPv6NDOptSrcLLAddr, ICMPv6NDOptDstLLAddr)


def ip(text: str) -> bytes:
    return parse_ipv6(text)


def mac(text: str) -> bytes:
    return parse_mac(text)


# --- cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageCase:
    """One ND message, as scapy fields and as the Portier message (options left out)."""

    name: str
    layer: type[Packet]
    fields: dict[str, Any]
    src: str
    dst: str
    message: NDMessage

    def scapy(self) -> Packet:
        return self.layer(**self.fields)


@dataclass(frozen=True)
class OptionCase:
    """One ND option, as scapy fields and as the Portier option it parses to."""

    name: str
    layer: type[Packet]
    fields: dict[str, Any]
    option: Option
    # How scapy reports a field after dissection, where it differs from what it was given.
    dissected: dict[str, Any] = field(default_factory=dict)

    def scapy(self) -> Packet:
        return self.layer(**self.fields)


MESSAGES = [
    MessageCase(
        "RS",
        ICMPv6ND_RS,
        {"res": 0x01020304},
        "fe80::5054:ff:fe00:101",
        "ff02::2",
        RouterSolicitation(reserved=0x01020304),
    ),
    MessageCase(
        "RA",
        ICMPv6ND_RA,
        {
            "chlim": 64,
            "M": 1,
            "O": 0,
            "H": 1,
            "prf": 3,
            "P": 0,
            "res": 2,
            "routerlifetime": 1800,
            "reachabletime": 30000,
            "retranstimer": 1000,
        },
        "fe80::1",
        "ff02::1",
        # M (0x80) | H (0x20) | prf=3 (0x18) | res=2 (0x02); P (0x04) clear.
        RouterAdvertisement(64, 0xBA, 1800, 30000, 1000),
    ),
    MessageCase(
        "NS",
        ICMPv6ND_NS,
        {"tgt": "2001:db8:1::102"},
        "fe80::5054:ff:fe00:101",
        "ff02::1:ff00:102",
        NeighborSolicitation(ip("2001:db8:1::102")),
    ),
    MessageCase(
        "NA",
        ICMPv6ND_NA,
        {"R": 1, "S": 1, "O": 0, "res": 0x12345, "tgt": "2001:db8:1::102"},
        "2001:db8:1::102",
        "fe80::5054:ff:fe00:101",
        NeighborAdvertisement(ip("2001:db8:1::102"), 0xC0, reserved=0x12345),
    ),
    MessageCase(
        "Redirect",
        ICMPv6ND_Redirect,
        {"tgt": "fe80::2", "dst": "2001:db8:ffff::9"},
        "fe80::1",
        "2001:db8:1::101",
        Redirect(ip("fe80::2"), ip("2001:db8:ffff::9")),
    ),
]

# The first 48 bytes (IPv6 + UDP header) of a redirected packet: a multiple of 8, so
# the Redirected Header option needs no padding.
REDIRECTED_PACKET = bytes(
    IPv6(src="2001:db8:1::101", dst="2001:db8:ffff::9", plen=1000) / UDP(sport=5000, dport=53)
)
assert len(REDIRECTED_PACKET) == 48

DNSSL_WIRE = b"\x07example\x03com\x00\x03lab\x07example\x03org\x00"  # 30 bytes

OPTIONS = [
    OptionCase(
        "SLLA",
        ICMPv6NDOptSrcLLAddr,
        {"lladdr": SENDER_MAC},
        LinkLayerAddressOption(1, mac(SENDER_MAC)),
    ),
    OptionCase(
        "TLLA",
        ICMPv6NDOptDstLLAddr,
        {"lladdr": RECEIVER_MAC},
        LinkLayerAddressOption(2, mac(RECEIVER_MAC)),
    ),
    OptionCase(
        "PrefixInformation",
        ICMPv6NDOptPrefixInfo,
        {
            "prefixlen": 64,
            "L": 1,
            "A": 0,
            "R": 1,
            "res1": 0,
            "validlifetime": 86400,
            "preferredlifetime": 14400,
            "res2": 7,
            "prefix": "2001:db8:1::",
        },
        PrefixInformation(64, 0xA0, 86400, 14400, ip("2001:db8:1::"), 7),
    ),
    OptionCase(
        "RedirectedHeader",
        ICMPv6NDOptRedirectedHdr,
        {"pkt": REDIRECTED_PACKET},
        RedirectedHeader(REDIRECTED_PACKET),
    ),
    OptionCase("MTU", ICMPv6NDOptMTU, {"mtu": 1500}, MtuOption(1500)),
    OptionCase(
        "RDNSS",
        ICMPv6NDOptRDNSS,
        {"res": 0, "lifetime": 600, "dns": ["2001:db8::53", "2001:db8:1::53"]},
        RecursiveDnsServers(600, (ip("2001:db8::53"), ip("2001:db8:1::53"))),
    ),
    OptionCase(
        "DNSSL",
        ICMPv6NDOptDNSSL,
        {"res": 0, "lifetime": 900, "searchlist": ["example.com", "lab.example.org"]},
        # 2 + 6 + 30 bytes, padded with two zero bytes to 40.
        DnsSearchList(900, DNSSL_WIRE + b"\x00\x00"),
        dissected={"searchlist": ["example.com.", "lab.example.org."]},
    ),
    OptionCase(
        "unknown-200",
        ICMPv6NDOptUnknown,
        {"type": 200, "data": b"\x01\x02\x03\x04\x05\x06"},
        RawOption(200, b"\x01\x02\x03\x04\x05\x06"),
    ),
    OptionCase(
        "unknown-253-two-units",
        ICMPv6NDOptUnknown,
        {"type": 253, "data": bytes(range(14))},
        RawOption(253, bytes(range(14))),
    ),
    # Type 7 (Advertisement Interval, RFC 6275) is known to scapy but not to Portier.
    OptionCase(
        "unknown-7",
        ICMPv6NDOptAdvInterval,
        {"res": 0x0102, "advint": 60000},
        RawOption(7, b"\x01\x02" + (60000).to_bytes(4, "big")),
    ),
]


def _message(name: str) -> MessageCase:
    return next(case for case in MESSAGES if case.name == name)


def _option(name: str) -> OptionCase:
    return next(opt for opt in OPTIONS if opt.name == name)


message_cases = pytest.mark.parametrize("case", MESSAGES, ids=lambda case: case.name)
option_cases = pytest.mark.parametrize("opt", OPTIONS, ids=lambda opt: opt.name)


# --- helpers -------------------------------------------------------------------------


def scapy_frame(case: MessageCase, *options: Packet, hlim: int = 255, **ipv6: Any) -> bytes:
    """Ether/IPv6/ND/options built by scapy, checksum and lengths computed by scapy."""
    packet = Ether(src=SENDER_MAC, dst=RECEIVER_MAC) / IPv6(
        src=case.src, dst=case.dst, hlim=hlim, **ipv6
    )
    packet = packet / case.scapy()
    for option in options:
        packet = packet / option
    return bytes(packet)


def portier_frame(case: MessageCase, options: tuple[Option, ...]) -> bytes:
    src, dst = ip(case.src), ip(case.dst)
    icmp = encode_nd(replace(case.message, options=options), src, dst)
    header = IPv6Header(src, dst, 58, 255, len(icmp))
    return build_frame(mac(RECEIVER_MAC), mac(SENDER_MAC), header, icmp)


def nd_layer(packet: Packet) -> Packet:
    for layer in ND_LAYERS:
        if layer in packet:
            return packet[layer]
    raise AssertionError(f"scapy found no ND layer in {packet.summary()}")


def scapy_checksum(layer: Packet) -> int:
    """What scapy computes as the checksum of the ICMPv6 message `layer`."""
    raw = bytearray(bytes(layer))
    raw[2:4] = b"\x00\x00"
    return in6_chksum(58, layer, bytes(raw))


def scapy_rebuilt_checksum(packet: Packet) -> int:
    """Checksum after deleting it and letting scapy rebuild the frame."""
    copy = packet.copy()
    del nd_layer(copy).cksum
    return nd_layer(Ether(bytes(copy))).cksum


def assert_fields(layer: Packet, expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        got = layer.getfieldval(name)
        if isinstance(value, bytes) and isinstance(got, Packet):
            got = bytes(got)
        assert got == value, f"{layer.name}.{name}: {got!r} != {value!r}"


def option_spans(packet: Packet) -> list[tuple[Packet, int, int]]:
    """(option layer, offset in frame, length) of every option scapy dissected."""
    message = nd_layer(packet)
    offset = len(packet) - len(message)
    layer, spans = message, []
    while not isinstance(layer, NoPayload):
        own = len(layer) - len(layer.payload)
        if layer is not message:
            spans.append((layer, offset, own))
        offset += own
        layer = layer.payload
    return spans


# --- a) scapy builds, Portier parses -------------------------------------------------


@message_cases
@option_cases
def test_scapy_built_frame_parses_to_the_same_fields(case: MessageCase, opt: OptionCase):
    frame = scapy_frame(case, opt.scapy())
    scapy_cksum = nd_layer(Ether(frame)).cksum

    packet = parse_packet(frame)
    assert packet.dst_mac == mac(RECEIVER_MAC)
    assert packet.src_mac == mac(SENDER_MAC)
    assert packet.ipv6.src == ip(case.src)
    assert packet.ipv6.dst == ip(case.dst)
    assert packet.ipv6.hop_limit == 255
    assert packet.ipv6.next_header == 58
    assert packet.ipv6.payload_length == len(frame) - 54
    assert (packet.upper_protocol, packet.upper_offset) == (58, 54)
    assert not packet.fragmented and not packet.routed

    message = parse_nd(packet.upper)
    assert message == replace(case.message, options=(opt.option,), checksum=scapy_cksum)
    assert validate_nd(255, ip(case.src), ip(case.dst), packet.upper) == message


@message_cases
def test_scapy_built_frame_with_every_option_parses(case: MessageCase):
    frame = scapy_frame(case, *(opt.scapy() for opt in OPTIONS))
    packet = parse_packet(frame)
    message = validate_nd(255, packet.ipv6.src, packet.ipv6.dst, packet.upper)
    assert message.options == tuple(opt.option for opt in OPTIONS)
    assert message.checksum == nd_layer(Ether(frame)).cksum


def test_scapy_ra_flags_map_to_portier_flag_properties():
    case = _message("RA")
    fields = {**case.fields, "M": 0, "O": 1, "H": 0, "prf": 0, "P": 1, "res": 0}
    frame = bytes(
        Ether(src=SENDER_MAC, dst=RECEIVER_MAC)
        / IPv6(src=case.src, dst=case.dst, hlim=255)
        / ICMPv6ND_RA(**fields)
    )
    message = parse_nd(parse_packet(frame).upper)
    assert isinstance(message, RouterAdvertisement)
    assert message.flags == 0x44
    assert message.proxy


def test_scapy_dnssl_and_prefix_accessors():
    dnssl, prefix = _option("DNSSL"), _option("PrefixInformation")
    frame = scapy_frame(_message("RA"), dnssl.scapy(), prefix.scapy())
    message = parse_nd(parse_packet(frame).upper)
    parsed_dnssl, parsed_prefix = message.options
    assert isinstance(parsed_dnssl, DnsSearchList)
    assert parsed_dnssl.domains() == ["example.com", "lab.example.org"]
    assert isinstance(parsed_prefix, PrefixInformation)
    assert parsed_prefix.on_link and not parsed_prefix.autonomous


@pytest.mark.parametrize(
    "extension, fragmented",
    [
        pytest.param(IPv6ExtHdrHopByHop(), False, id="hop-by-hop"),
        pytest.param(IPv6ExtHdrDestOpt(), False, id="destination-options"),
        pytest.param(IPv6ExtHdrFragment(m=0, offset=0, id=7), True, id="fragment"),
        # scapy fills in neither AH's next header nor its length (in 4-byte units - 2).
        pytest.param(AH(nh=58, payloadlen=4, spi=1, seq=1, icv=bytes(12)), False, id="AH"),
    ],
)
def test_scapy_extension_header_before_nd_is_walked(extension: Packet, fragmented: bool):
    case = _message("NS")
    packet = (
        Ether(src=SENDER_MAC, dst=RECEIVER_MAC)
        / IPv6(src=case.src, dst=case.dst, hlim=255)
        / extension
        / case.scapy()
        / ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC)
    )
    frame = bytes(packet)
    parsed = parse_packet(frame)
    assert parsed.upper_protocol == 58
    assert parsed.upper_offset == 54 + len(extension)
    assert parsed.fragmented is fragmented
    assert parsed.upper == bytes(packet[ICMPv6ND_NS])
    message = validate_nd(255, parsed.ipv6.src, parsed.ipv6.dst, parsed.upper)
    assert message.options == (LinkLayerAddressOption(1, mac(SENDER_MAC)),)


@pytest.mark.parametrize("count", range(1, 9))
def test_scapy_chain_of_destination_options_headers(count: int):
    case = _message("RS")
    packet = Ether(src=SENDER_MAC, dst=RECEIVER_MAC) / IPv6(src=case.src, dst=case.dst, hlim=255)
    for _ in range(count):
        packet = packet / IPv6ExtHdrDestOpt()
    frame = bytes(packet / case.scapy())
    parsed = parse_packet(frame)
    assert (parsed.upper_protocol, parsed.upper_offset) == (58, 54 + 8 * count)


def test_scapy_frame_with_ethernet_padding_parses():
    case = _message("RS")
    frame = scapy_frame(case, ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC)) + bytes(20)
    packet = parse_packet(frame)
    assert packet.data == frame[:-20]
    assert isinstance(
        validate_nd(255, packet.ipv6.src, packet.ipv6.dst, packet.upper), type(case.message)
    )


INVALID = [
    pytest.param(_message("NS"), 64, (), DropReason.HOP_LIMIT_NOT_255, id="hop-limit-64"),
    pytest.param(
        replace(_message("NS"), fields={**_message("NS").fields, "code": 1}),
        255,
        (),
        DropReason.BAD_CODE,
        id="code-1",
    ),
    pytest.param(
        replace(_message("NA"), fields={**_message("NA").fields, "cksum": 0x1234}),
        255,
        (),
        DropReason.BAD_CHECKSUM,
        id="bad-checksum",
    ),
    pytest.param(
        replace(_message("NS"), src="::"),
        255,
        (ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC),),
        DropReason.UNSPECIFIED_SOURCE_WITH_SLLA,
        id="dad-ns-with-slla",
    ),
    pytest.param(
        replace(_message("NS"), src="::", dst="ff02::1"),
        255,
        (),
        DropReason.DAD_DESTINATION_NOT_SOLICITED_NODE,
        id="dad-ns-to-all-nodes",
    ),
    pytest.param(
        replace(_message("RS"), src="::"),
        255,
        (ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC),),
        DropReason.UNSPECIFIED_SOURCE_WITH_SLLA,
        id="rs-unspecified-with-slla",
    ),
    pytest.param(
        replace(_message("RA"), src="2001:db8::1"),
        255,
        (),
        DropReason.RA_SOURCE_NOT_LINK_LOCAL,
        id="ra-from-global",
    ),
    pytest.param(
        replace(_message("NS"), fields={"tgt": "ff02::1"}),
        255,
        (),
        DropReason.TARGET_MULTICAST,
        id="ns-multicast-target",
    ),
    pytest.param(
        replace(_message("NA"), dst="ff02::1"),
        255,
        (),
        DropReason.NA_SOLICITED_TO_MULTICAST,
        id="solicited-na-to-multicast",
    ),
    pytest.param(
        replace(_message("Redirect"), src="2001:db8::1"),
        255,
        (),
        DropReason.REDIRECT_SOURCE_NOT_LINK_LOCAL,
        id="redirect-from-global",
    ),
    pytest.param(
        replace(_message("Redirect"), fields={"tgt": "fe80::2", "dst": "ff05::1"}),
        255,
        (),
        DropReason.REDIRECT_DESTINATION_MULTICAST,
        id="redirect-multicast-destination",
    ),
    pytest.param(
        replace(_message("Redirect"), fields={"tgt": "2001:db8::2", "dst": "2001:db8::9"}),
        255,
        (),
        DropReason.REDIRECT_BAD_TARGET,
        id="redirect-global-target",
    ),
    pytest.param(
        _message("NS"),
        255,
        (ICMPv6NDOptUnknown(type=200, len=0, data=b"\x00" * 6),),
        DropReason.ZERO_LENGTH_OPTION,
        id="zero-length-option",
    ),
    pytest.param(
        _message("NS"),
        255,
        (ICMPv6NDOptUnknown(type=200, len=2, data=b"\x00" * 6),),
        DropReason.TRUNCATED_OPTION,
        id="truncated-option",
    ),
    pytest.param(
        replace(_message("NS"), src="ff02::1"),
        255,
        (),
        DropReason.MULTICAST_SOURCE,
        id="multicast-source",
    ),
]


@pytest.mark.parametrize("case, hlim, options, reason", INVALID)
def test_scapy_built_invalid_frame_is_rejected_with_its_reason(
    case: MessageCase, hlim: int, options: tuple[Packet, ...], reason: DropReason
):
    frame = scapy_frame(case, *options, hlim=hlim)
    packet = parse_packet(frame)
    with pytest.raises(FrameError) as caught:
        validate_nd(packet.ipv6.hop_limit, packet.ipv6.src, packet.ipv6.dst, packet.upper)
    assert caught.value.reason == reason


# --- b) Portier builds, scapy dissects -----------------------------------------------


@message_cases
@option_cases
def test_portier_built_frame_dissects_in_scapy(case: MessageCase, opt: OptionCase):
    frame = portier_frame(case, (opt.option,))
    packet = Ether(frame)

    assert packet[Ether].dst == RECEIVER_MAC
    assert packet[Ether].src == SENDER_MAC
    assert packet[Ether].type == 0x86DD
    ipv6 = packet[IPv6]
    assert (ipv6.version, ipv6.nh, ipv6.hlim, ipv6.plen) == (6, 58, 255, len(frame) - 54)
    assert ipv6.src == str(ipaddress.IPv6Address(case.src))
    assert ipv6.dst == str(ipaddress.IPv6Address(case.dst))

    message = nd_layer(packet)
    assert isinstance(message, case.layer)
    assert_fields(message, case.fields)
    option = message.payload
    assert isinstance(option, opt.layer), option.summary()
    assert_fields(option, {**opt.fields, **opt.dissected})
    assert isinstance(option.payload, NoPayload), "scapy saw bytes after the option"

    assert message.cksum == scapy_checksum(message)
    assert message.cksum == scapy_rebuilt_checksum(packet)
    assert bytes(packet) == frame


@message_cases
@option_cases
def test_portier_and_scapy_build_the_same_bytes(case: MessageCase, opt: OptionCase):
    assert portier_frame(case, (opt.option,)) == scapy_frame(case, opt.scapy())


@message_cases
def test_portier_built_frame_with_every_option_dissects_in_scapy(case: MessageCase):
    frame = portier_frame(case, tuple(opt.option for opt in OPTIONS))
    packet = Ether(frame)
    spans = option_spans(packet)
    assert [type(layer) for layer, _, _ in spans] == [opt.layer for opt in OPTIONS]
    for (layer, _, _), opt in zip(spans, OPTIONS, strict=True):
        assert_fields(layer, {**opt.fields, **opt.dissected})
    assert nd_layer(packet).cksum == scapy_checksum(nd_layer(packet))


# --- c) options Portier does not interpret survive byte for byte --------------------

UNINTERPRETED = [
    ICMPv6NDOptUnknown(type=200, data=b"\xde\xad\xbe\xef\x00\x01"),
    ICMPv6NDOptUnknown(type=0, data=bytes(range(22))),
    ICMPv6NDOptAdvInterval(res=0xFFFF, advint=0x01020304),
    # Known types whose size Portier cannot interpret stay raw too.
    ICMPv6NDOptUnknown(type=5, data=bytes(range(1, 15))),  # MTU, 2 units
    ICMPv6NDOptUnknown(type=3, data=bytes(range(6))),  # Prefix Information, 1 unit
    ICMPv6NDOptUnknown(type=25, data=bytes(range(14))),  # RDNSS, 2 units
    ICMPv6NDOptUnknown(type=31, data=b"\xff" * 6),  # DNSSL, 1 unit
]


@message_cases
def test_uninterpreted_options_survive_byte_for_byte(case: MessageCase):
    options = [*UNINTERPRETED[:2], ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC), *UNINTERPRETED[2:]]
    frame = scapy_frame(case, *options)
    packet = parse_packet(frame)
    icmp = packet.upper
    message = parse_nd(icmp)

    raw = [option for option in message.options if isinstance(option, RawOption)]
    assert raw == [RawOption(option.type, bytes(option)[2:]) for option in UNINTERPRETED]
    assert encode_nd(message) == icmp
    assert encode_nd(message, packet.ipv6.src, packet.ipv6.dst) == icmp
    for option, scapy_option in zip(raw, UNINTERPRETED, strict=True):
        assert option.encode() == bytes(scapy_option)


@message_cases
@option_cases
def test_scapy_built_message_re_encodes_identically(case: MessageCase, opt: OptionCase):
    icmp = parse_packet(scapy_frame(case, opt.scapy())).upper
    assert encode_nd(parse_nd(icmp)) == icmp


# --- d) RFC 4389 rewriting, checked by scapy -----------------------------------------

REWRITE_OPTIONS = {
    "RS": [ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC)],
    "RA": [
        ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC),
        ICMPv6NDOptMTU(mtu=1500),
        ICMPv6NDOptPrefixInfo(prefix="2001:db8:1::"),
        ICMPv6NDOptRDNSS(dns=["2001:db8::53"], lifetime=600),
    ],
    "NS": [ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC)],
    "NA": [ICMPv6NDOptDstLLAddr(lladdr=RECEIVER_MAC)],
    "Redirect": [
        ICMPv6NDOptDstLLAddr(lladdr=RECEIVER_MAC),
        ICMPv6NDOptRedirectedHdr(pkt=REDIRECTED_PACKET),
    ],
}


def allowed_changes(original: Packet) -> set[int]:
    """Frame offsets RFC 4389 lets a proxy change (ignoring the RA P bit detail)."""
    icmp = len(original) - len(nd_layer(original))
    allowed = {*range(12), icmp + 2, icmp + 3}
    if ICMPv6ND_RA in original:
        allowed.add(icmp + 5)
    for layer, offset, length in option_spans(original):
        if isinstance(layer, LLA_LAYERS) and length == 8 and not mac(layer.lladdr)[0] & 1:
            allowed.update(range(offset + 2, offset + 8))
    return allowed


def check_rewrite(frame: bytes, icmp_offset: int) -> Packet:
    original = Ether(frame)
    out = rewrite_nd(frame, icmp_offset, mac(EGRESS_MAC), mac(NEXT_HOP_MAC))
    assert len(out) == len(frame)
    packet = Ether(out)

    assert packet[Ether].src == EGRESS_MAC
    assert packet[Ether].dst == NEXT_HOP_MAC
    assert packet[IPv6].hlim == 255
    message = nd_layer(packet)
    assert type(message) is type(nd_layer(original))
    assert message.cksum == scapy_checksum(message)
    assert message.cksum == scapy_rebuilt_checksum(packet)

    spans = zip(option_spans(original), option_spans(packet), strict=True)
    for (before, _, length), (after, _, _) in spans:
        assert type(after) is type(before)
        if isinstance(before, LLA_LAYERS) and length == 8 and not mac(before.lladdr)[0] & 1:
            assert after.lladdr == EGRESS_MAC
    if isinstance(message, ICMPv6ND_RA):
        assert message.P == 1
        received = nd_layer(original)
        for name in ("chlim", "M", "O", "H", "prf", "res", "routerlifetime"):
            assert message.getfieldval(name) == received.getfieldval(name), name

    changed = {i for i in range(len(frame)) if frame[i] != out[i]}
    assert changed <= allowed_changes(original)
    if ICMPv6ND_RA in original:
        assert frame[icmp_offset + 5] ^ out[icmp_offset + 5] in (0, 0x04)

    parsed = parse_packet(out)
    validate_nd(parsed.ipv6.hop_limit, parsed.ipv6.src, parsed.ipv6.dst, parsed.upper)
    return packet


@message_cases
def test_rewrite_of_scapy_frame_is_valid_for_scapy(case: MessageCase):
    frame = scapy_frame(case, *REWRITE_OPTIONS[case.name])
    packet = check_rewrite(frame, 54)
    lla = [layer for layer, _, _ in option_spans(packet) if isinstance(layer, LLA_LAYERS)]
    assert lla and all(layer.lladdr == EGRESS_MAC for layer in lla)


@message_cases
def test_rewrite_behind_hop_by_hop_header(case: MessageCase):
    scapy_packet = Ether(src=SENDER_MAC, dst=RECEIVER_MAC) / IPv6(
        src=case.src, dst=case.dst, hlim=255
    )
    scapy_packet = scapy_packet / IPv6ExtHdrHopByHop() / case.scapy()
    for option in REWRITE_OPTIONS[case.name]:
        scapy_packet = scapy_packet / option
    frame = bytes(scapy_packet)
    check_rewrite(frame, 62)
    assert frame[54:62] == rewrite_nd(frame, 62, mac(EGRESS_MAC), mac(NEXT_HOP_MAC))[54:62]


def test_rewrite_sets_p_flag_only_once():
    case = _message("RA")
    frame = scapy_frame(
        replace(case, fields={**case.fields, "P": 1}), ICMPv6NDOptSrcLLAddr(lladdr=SENDER_MAC)
    )
    out = rewrite_nd(frame, 54, mac(EGRESS_MAC), mac(NEXT_HOP_MAC))
    assert out[59] == frame[59]
    assert Ether(out)[ICMPv6ND_RA].P == 1


@message_cases
def test_rewrite_leaves_multicast_and_long_link_layer_options_alone(case: MessageCase):
    options = [
        ICMPv6NDOptSrcLLAddr(lladdr=MULTICAST_LLA),
        ICMPv6NDOptUnknown(type=2, data=bytes(range(14))),  # a 2-unit TLLA (other link type)
        ICMPv6NDOptDstLLAddr(lladdr=RECEIVER_MAC),
    ]
    frame = scapy_frame(case, *options)
    out = rewrite_nd(frame, 54, mac(EGRESS_MAC), mac(NEXT_HOP_MAC))
    # The multicast SLLA (offset 2..8 of the first option) and the 2-unit option stay.
    first = 54 + len(case.scapy())
    assert out[first : first + 24] == frame[first : first + 24]
    assert out[first + 26 : first + 32] == mac(EGRESS_MAC)  # the 1-unit unicast TLLA
    message = validate_nd(255, ip(case.src), ip(case.dst), parse_packet(out).upper)
    assert message.options[0] == LinkLayerAddressOption(1, mac(MULTICAST_LLA))
    assert message.options[1] == LinkLayerAddressOption(2, bytes(range(14)))
