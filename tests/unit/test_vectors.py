"""The original Portier's test vectors (reference/original-behaviour.md §8), on our code."""

import pytest

from portier.addresses import (
    AddressError,
    format_mac,
    is_link_local,
    is_multicast,
    is_solicited_node_of,
    is_unspecified,
    mac_is_broadcast,
    mac_is_local,
    mac_is_multicast,
    mac_is_unicast,
    multicast_mac,
    parse_eui64,
    parse_ipv6,
    parse_mac,
)
from portier.checksum import ones_complement_sum, pseudo_header_sum
from portier.drops import DropReason, FrameError
from portier.frame import IPv6Header, build_frame, parse_packet
from portier.ndmsg import (
    LinkLayerAddressOption,
    MtuOption,
    NeighborAdvertisement,
    NeighborSolicitation,
    PrefixInformation,
    RawOption,
    Redirect,
    RedirectedHeader,
    RouterAdvertisement,
    RouterSolicitation,
    encode_nd,
    parse_nd,
)
from portier.rewrite import rewrite_nd

H = bytes.fromhex
RS1 = H("85001234 00000000")
RA1 = H("860078ab ff842328 05265c00 000927c0")
NS1 = H("87008999 00000000 fe800000 00000000 98323d50 3aa35af9")
NA1 = H("88000001 40000000 fe800000 00000000 846de6ff fe2dacf3")
R1 = H("89000100 00000000 2401fa00 04800056 c5f18aa4 c5c25972 2401fa00 04800056 495eb40c 93183ca5")
NON_ND = H("80000000 05392329")
NA_BAD_SIZE = H("88000000 00000000 fe800000 00000000")
SLLA1 = H("0101a08c fdc3b3bf")
SLLA2 = H("0101a08c fdc3b3c0")
SLLA_ZERO = H("01000000 00000000")
TLLA1 = H("02013285 6c5ba1ca")
TLLA2 = H("0201d425 8bb2cccb")
TLLA_OVERSIZE = H("02021122 33445566 77889900 00000000")
PI1 = H("030440c0 0003f480 0003d860 00000000 26200000 10001511 00000000 00000000")
PI2 = H("03043000 00015180 0000a8c0 00000000 2401fa00 04800000 00000000 00000000")
RH1 = H("04040000 00000000") + b"I like cheese n crackers"
MTU1 = H("05010000 000005dc")
UNKNOWN = H("0701dead beef1337")


# --- §8.1 checksum ------------------------------------------------------------------


def _sum(src: str, dst: str, next_header: int, data: bytes) -> int:
    value = ones_complement_sum(
        parse_ipv6(src)
        + parse_ipv6(dst)
        + len(data).to_bytes(4, "big")
        + bytes(3)
        + bytes([next_header])
        + data
    )
    return 0 if value == 0xFFFF else value


@pytest.mark.parametrize(
    ("src", "dst", "next_header", "data", "expected"),
    [
        ("::", "::", 0, b"", 0x0000),
        ("::", "ff02::1", 59, b"", 0xFF3E),
        ("ffff:" * 7 + "ffff", "ffff:" * 7 + "ffff", 0xFF, b"", 0x00FF),
        (
            "2401:fa00:480:56:c1dd:402b:cc2f:7209",
            "fe80::aef2:c5ff:fe71:17bf",
            58,
            H("80000000 05392329 11223344 55667788"),
            0xA6C0,
        ),
        ("fe80::1", "ff02::1", 58, H("112233"), 0x41E5),
    ],
)
def test_checksum_vectors(src, dst, next_header, data, expected):
    assert _sum(src, dst, next_header, data) == expected


def test_checksum_round_trip_folds_to_zero():
    message = bytearray(H("01000000 12345678"))
    total = _sum("fe80::1", "ff02::1", 58, bytes(message))
    message[2:4] = ((~total) & 0xFFFF).to_bytes(2, "big")
    assert _sum("fe80::1", "ff02::1", 58, bytes(message)) == 0


def test_pseudo_header_sum_matches_the_vector():
    assert pseudo_header_sum(parse_ipv6("::"), parse_ipv6("ff02::1"), 0, 59) == 0xFF3E


def test_checksum_folds_every_carry():
    # 0xFFFF words sum to many carries; a single fold would leave a wrong value.
    assert ones_complement_sum(b"\xff\xff" * 70000 + b"\x00\x01") == 0x0001


# --- §8.2 addresses -------------------------------------------------------------------

LINK_LOCALS = [
    "fe80::3c20:87b0:b0ce:23f4",
    "fe80::f155:a038:ae18:faf2",
    "fe80::5a6d:8fff:fe99:e5be",
]
GLOBALS = ["2620:15c:202:201:f155:a038:ae18:faf2", "2401:fa00:480:56:5a6d:8fff:fe99:e5be"]


def test_unspecified():
    assert is_unspecified(parse_ipv6("::"))
    for text in ["::1", *LINK_LOCALS, *GLOBALS]:
        assert not is_unspecified(parse_ipv6(text))


def test_link_local():
    for text in LINK_LOCALS:
        assert is_link_local(parse_ipv6(text))
    for text in [*GLOBALS, "::", "::1"]:
        assert not is_link_local(parse_ipv6(text))


def test_multicast():
    yes = ["ff02::1", "ff02::2", "ff05::2", "ff02::1:ff18:faf2", "ff02::1:ff99:e5be"]
    yes += ["ff02::ff18:faf2", "ff02::ff99:e5be"]
    for text in yes:
        assert is_multicast(parse_ipv6(text))
    for text in ["::", "::1", *LINK_LOCALS, "fe05::1", "7f05::2", "ee05::3"]:
        assert not is_multicast(parse_ipv6(text))


def test_solicited_node():
    a, b = (parse_ipv6(t) for t in GLOBALS)
    ma, mb = parse_ipv6("ff02::1:ff18:faf2"), parse_ipv6("ff02::1:ff99:e5be")
    assert is_solicited_node_of(ma, a)
    assert is_solicited_node_of(mb, b)
    assert not is_solicited_node_of(a, ma)
    assert not is_solicited_node_of(ma, b)
    assert not is_solicited_node_of(mb, a)
    assert not is_solicited_node_of(parse_ipv6("ff02::ff18:faf2"), a)


@pytest.mark.parametrize(
    ("address", "mac"),
    [
        ("ff02::1", "33:33:00:00:00:01"),
        ("ff02::2", "33:33:00:00:00:02"),
        ("ff05::2", "33:33:00:00:00:02"),
        ("ff02::1:ff18:faf2", "33:33:ff:18:fa:f2"),
        ("ff02::1:ff99:e5be", "33:33:ff:99:e5:be"),
    ],
)
def test_multicast_mac(address, mac):
    assert format_mac(multicast_mac(parse_ipv6(address))) == mac


# --- §8.4 link-layer addresses ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unicast", "multicast", "broadcast", "local"),
    [
        ("a0:8c:fd:c3:b3:c0", True, False, False, False),
        ("a2:8c:fd:c3:b3:bf", True, False, False, True),
        ("01:00:0c:cc:cc:cc", False, True, False, False),
        ("33:33:fe:df:dc:4e", False, True, False, True),
        ("ff:ff:ff:ff:ff:ff", False, True, True, True),
    ],
)
def test_mac_classification(text, unicast, multicast, broadcast, local):
    mac = parse_mac(text)
    assert format_mac(mac) == text
    assert (mac_is_unicast(mac), mac_is_multicast(mac), mac_is_broadcast(mac)) == (
        unicast,
        multicast,
        broadcast,
    )
    assert mac_is_local(mac) == local


def test_mac_parse_is_case_insensitive():
    assert (
        parse_mac("eE:fF:3c:22:6A:bB")
        == parse_mac("EE:fF:3c:22:6a:bb")
        == parse_mac("ee:ff:3C:22:6A:BB")
    )


@pytest.mark.parametrize(
    "text",
    [
        "11-22-33-44-55-66",
        "11-22-33-44-55-66-77-88",
        " 11:22:33:44:55:66",
        "11:22:33:44:55:66 ",
        "11:22:33: 44:55:66",
        "To be or not to be",
        "50-ef:1f-61:d1-e7",
        "50:ef:1g:6z:d1:e7",
        "",
        "1:22:33:44:55:66",
        "11:22:33:44:55:666",
        ":11:22:33:44:55:66",
        "11:22:33:44:55:66:",
        "11::33:44:55:66",
        "50:ef:f:61:1:e7",
        "11:22:33:44:55:66:77:88",
    ],
)
def test_mac_rejected_strings(text):
    with pytest.raises(AddressError):
        parse_mac(text)


def test_eui64_is_not_eui48():
    assert len(parse_eui64("11:22:33:44:55:66:77:88")) == 8
    with pytest.raises(AddressError):
        parse_eui64("11:22:33:44:55:66")


# --- §8.3 ND messages -------------------------------------------------------------------


def test_empty_and_non_nd_are_rejected():
    with pytest.raises(FrameError) as err:
        parse_nd(b"")
    assert err.value.reason == DropReason.MESSAGE_TOO_SHORT
    with pytest.raises(FrameError) as err:
        parse_nd(NON_ND)
    assert err.value.reason == DropReason.NOT_ND_MESSAGE
    with pytest.raises(FrameError) as err:
        parse_nd(NA_BAD_SIZE)
    assert err.value.reason == DropReason.MESSAGE_TOO_SHORT


def test_unknown_option_is_kept_byte_for_byte():
    message = parse_nd(NS1 + UNKNOWN)
    assert message.options == (RawOption(7, H("dead beef1337")),)
    assert encode_nd(message) == NS1 + UNKNOWN


def test_zero_length_option_invalidates_the_message():
    with pytest.raises(FrameError) as err:
        parse_nd(R1 + SLLA_ZERO)
    assert err.value.reason == DropReason.ZERO_LENGTH_OPTION


def test_oversize_tlla_is_valid_and_kept():
    message = parse_nd(NA1 + TLLA_OVERSIZE)
    assert message.options == (LinkLayerAddressOption(2, TLLA_OVERSIZE[2:]),)
    assert encode_nd(message) == NA1 + TLLA_OVERSIZE


def test_builders_start_with_checksum_zero():
    target = parse_ipv6("fe80::1")
    for message in (
        RouterSolicitation(),
        RouterAdvertisement(),
        NeighborSolicitation(target),
        NeighborAdvertisement(target),
        Redirect(target, target),
    ):
        assert encode_nd(message)[2:4] == b"\x00\x00"


def test_pushed_options_read_back():
    mac = parse_mac("a0:8c:fd:c3:b3:bf")
    ra = RouterAdvertisement(
        255,
        0x84,
        9000,
        86_400_000,
        600_000,
        (
            LinkLayerAddressOption(1, mac),
            MtuOption(1500),
            parse_nd(RA1 + PI1).options[0],
            parse_nd(RA1 + PI2).options[0],
        ),
    )
    parsed = parse_nd(encode_nd(ra))
    assert parsed == ra
    assert [type(o).__name__ for o in parsed.options] == [
        "LinkLayerAddressOption",
        "MtuOption",
        "PrefixInformation",
        "PrefixInformation",
    ]
    redirect = Redirect(
        parse_ipv6("2001::1"),
        parse_ipv6("2001::2"),
        (LinkLayerAddressOption(2, mac), RedirectedHeader(bytes(24))),
    )
    assert parse_nd(encode_nd(redirect)) == redirect


def test_toggling_the_proxy_flag_keeps_m_and_o():
    out = rewrite_nd(_framed(RA1), 54, bytes(6), bytes(6))
    assert out[54 + 5] == 0x84  # P already set in RA1: unchanged
    cleared = RA1[:5] + b"\xc0" + RA1[6:]
    out = rewrite_nd(_framed(cleared), 54, bytes(6), bytes(6))
    assert out[54 + 5] == 0xC4


def _framed(icmp: bytes) -> bytes:
    src, dst = parse_ipv6("fe80::1"), parse_ipv6("ff02::1")
    return build_frame(bytes(6), bytes(6), IPv6Header(src, dst, 58, 255, len(icmp)), icmp)


def test_parsed_fixtures():
    rs = parse_nd(RS1 + SLLA1)
    assert rs.checksum == 0x1234
    assert rs.options == (LinkLayerAddressOption(1, parse_mac("a0:8c:fd:c3:b3:bf")),)

    ra = parse_nd(RA1 + SLLA1 + MTU1 + PI1 + PI2)
    assert isinstance(ra, RouterAdvertisement)
    assert (ra.checksum, ra.cur_hop_limit, ra.flags) == (0x78AB, 255, 0x84)
    assert (ra.router_lifetime_s, ra.reachable_time_ms, ra.retrans_timer_ms) == (
        9000,
        86_400_000,
        600_000,
    )
    slla, mtu, pi1, pi2 = ra.options
    assert slla == LinkLayerAddressOption(1, parse_mac("a0:8c:fd:c3:b3:bf"))
    assert mtu == MtuOption(1500)
    assert pi1 == PrefixInformation(64, 0xC0, 259_200, 252_000, parse_ipv6("2620:0:1000:1511::"))
    assert pi1.on_link and pi1.autonomous
    assert pi2 == PrefixInformation(48, 0x00, 86_400, 43_200, parse_ipv6("2401:fa00:480::"))
    assert not pi2.on_link and not pi2.autonomous

    ns = parse_nd(NS1 + SLLA2)
    assert ns.target == parse_ipv6("fe80::9832:3d50:3aa3:5af9")
    assert ns.options == (LinkLayerAddressOption(1, parse_mac("a0:8c:fd:c3:b3:c0")),)

    na = parse_nd(NA1 + TLLA1)
    assert isinstance(na, NeighborAdvertisement)
    assert (na.router, na.solicited, na.override) == (False, True, False)
    assert na.target == parse_ipv6("fe80::846d:e6ff:fe2d:acf3")
    assert na.options == (LinkLayerAddressOption(2, parse_mac("32:85:6c:5b:a1:ca")),)

    redirect = parse_nd(R1 + TLLA2 + RH1)
    assert isinstance(redirect, Redirect)
    assert redirect.target == parse_ipv6("2401:fa00:480:56:c5f1:8aa4:c5c2:5972")
    assert redirect.destination == parse_ipv6("2401:fa00:480:56:495e:b40c:9318:3ca5")
    tlla, rh = redirect.options
    assert tlla == LinkLayerAddressOption(2, parse_mac("d4:25:8b:b2:cc:cb"))
    assert rh == RedirectedHeader(b"I like cheese n crackers")


# --- §8.8 derived end-to-end example ----------------------------------------------------


def test_ns_rewrite_example():
    src, dst = parse_ipv6("fe80::a28c:fdff:fec3:b3c0"), parse_ipv6("ff02::1:ffa3:5af9")
    icmp = H("870010bf 00000000 fe800000 00000000 98323d50 3aa35af9 0101a08c fdc3b3c0")
    frame = build_frame(
        multicast_mac(dst), parse_mac("a0:8c:fd:c3:b3:c0"), IPv6Header(src, dst, 58, 255, 32), icmp
    )
    out = rewrite_nd(frame, 54, parse_mac("02:00:00:00:00:01"), multicast_mac(dst))
    assert out[:14] == H("3333ffa35af9 020000000001 86dd")
    assert out[14:22] == H("60000000 0020 3a ff")
    assert out[22:54] == frame[22:54]
    assert out[54:] == H("870060cf 00000000 fe800000 00000000 98323d50 3aa35af9 01010200 00000001")
    packet = parse_packet(out)
    assert packet.ipv6.hop_limit == 255


def test_nine_extension_headers_are_too_many():
    chain = bytes([60, 0, 1, 4, 0, 0, 0, 0]) * 8 + bytes([58, 0, 1, 4, 0, 0, 0, 0])
    payload = chain + bytes([133, 0, 0, 0, 0, 0, 0, 0])
    src = parse_ipv6("fe80::1")
    frame = build_frame(bytes(6), bytes(6), IPv6Header(src, src, 60, 255, len(payload)), payload)
    with pytest.raises(FrameError) as err:
        parse_packet(frame)
    assert err.value.reason == DropReason.BAD_EXTENSION_HEADER


def test_raw_option_pads_itself():
    assert RawOption(9, b"abc").encode() == b"\x09\x01abc\x00\x00\x00"
