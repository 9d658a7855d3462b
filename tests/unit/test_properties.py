"""Hypothesis property tests for the frame/ND codec, validation, rewriting and checksum.

a) No input makes parse_packet, parse_nd or validate_nd raise anything but FrameError.
b) Messages built from random fields and options round-trip through encode/parse.
c) RFC 4389 rewriting changes only the bytes the RFC allows, and the result validates.
d) The checksum equals a naive RFC 1071 reference.
e) The worker's early answer to a multicast NS is the full path's answer, or none, and
   the early NS check gives validate_nd's verdict.
f) Engine.handle_frame on arbitrary frames (near-valid ND, data, random bytes) from any
   ingress: nothing raises, every drop has a reason, frames go only where they may.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st
from ndframes import (
    GUEST1,
    GUEST1_MAC,
    GUEST2,
    GUEST2_MAC,
    GUEST3,
    GUEST3_MAC,
    OTHER_MAC,
    PREFIX,
    PROXY_UP_LL,
    REMOTE,
    ROUTER,
    ROUTER_LL,
    ROUTER_MAC,
    UP_MAC,
    VM1_MAC,
    VM2_MAC,
    lab_topology,
    nd_frame,
)

from portier.addresses import ALL_NODES, multicast_mac, solicited_node
from portier.answers import EarlyAnswers, build_answer_table
from portier.checksum import ones_complement_sum, upper_layer_checksum, verify_upper_layer
from portier.drops import DropReason, FrameError
from portier.engine import (
    Claimed,
    Dropped,
    Engine,
    Expired,
    Learned,
    LoopCleared,
    LoopDetected,
    PrefixLearned,
    Transmit,
)
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
    parse_options,
    with_checksum,
)
from portier.ownership import ClaimOutcome, OwnerChecks, Probe
from portier.rewrite import rewrite_nd
from portier.validation import solicitation_asker_mac, validate_nd

SETTINGS = settings(max_examples=200, deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u24 = st.integers(0, 0xFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u48 = st.integers(0, (1 << 48) - 1)
macs = st.binary(min_size=6, max_size=6)
addresses = st.binary(min_size=16, max_size=16)
LINK_LOCAL = bytes.fromhex("fe80000000000000")


def blocks(min_units: int = 0, max_units: int = 4, extra: int = 0) -> st.SearchStrategy[bytes]:
    """Random bytes of length 8*n + extra: option data that needs no padding."""
    return st.integers(min_units, max_units).flatmap(
        lambda n: st.binary(min_size=8 * n + extra, max_size=8 * n + extra)
    )


def only_frame_error(function: Callable[..., Any], *args: Any) -> Any:
    """Call; a FrameError gives None, any other exception fails the test."""
    try:
        return function(*args)
    except FrameError:
        return None


# --- strategies: options and messages in canonical (already padded) form --------------


def _interpreted(option_type: int, units: int) -> bool:
    """Whether Portier parses an option of this type and size into a typed option."""
    return (
        option_type in (1, 2, 4)
        or (option_type == 3 and units == 4)
        or (option_type == 5 and units == 1)
        or (option_type == 25 and units >= 3 and units % 2 == 1)
        or (option_type == 31 and units >= 2)
    )


raw_options = (
    st.tuples(u8, st.integers(1, 5))
    .filter(lambda kind_units: not _interpreted(*kind_units))
    .flatmap(
        lambda kind_units: st.builds(
            RawOption,
            st.just(kind_units[0]),
            st.binary(min_size=kind_units[1] * 8 - 2, max_size=kind_units[1] * 8 - 2),
        )
    )
)
link_layer_options = st.builds(
    LinkLayerAddressOption, st.sampled_from([1, 2]), macs | blocks(1, 2, extra=6)
)
prefix_options = st.builds(PrefixInformation, u8, u8, u32, u32, addresses, u32)
redirected_headers = st.builds(RedirectedHeader, blocks(0, 8), u48)
mtu_options = st.builds(MtuOption, u32, u16)
rdnss_options = st.builds(
    RecursiveDnsServers, u32, st.lists(addresses, min_size=1, max_size=4).map(tuple), u16
)
dnssl_options = st.builds(DnsSearchList, u32, blocks(1, 4), u16)
options = st.one_of(
    raw_options,
    link_layer_options,
    prefix_options,
    redirected_headers,
    mtu_options,
    rdnss_options,
    dnssl_options,
)
option_lists = st.lists(options, max_size=6).map(tuple)

messages = st.one_of(
    st.builds(RouterSolicitation, option_lists, u32, u8, u16),
    st.builds(RouterAdvertisement, u8, u8, u16, u32, u32, option_lists, u8, u16),
    st.builds(NeighborSolicitation, addresses, option_lists, u32, u8, u16),
    st.builds(NeighborAdvertisement, addresses, u8, option_lists, u24, u8, u16),
    st.builds(Redirect, addresses, addresses, option_lists, u32, u8, u16),
)


# --- a) nothing but FrameError -------------------------------------------------------


def ipv6_frame(
    payload: bytes,
    *,
    src: bytes,
    dst: bytes,
    next_header: int = 58,
    hop_limit: int = 255,
    payload_length: int | None = None,
    mac_pair: tuple[bytes, bytes] = (b"\x33\x33\x00\x00\x00\x01", b"\x52\x54\x00\x00\x00\x01"),
) -> bytes:
    length = len(payload) if payload_length is None else payload_length
    header = IPv6Header(src, dst, next_header, hop_limit, length)
    return build_frame(mac_pair[0], mac_pair[1], header, payload)


def exercise_parsers(frame: bytes) -> None:
    packet = only_frame_error(parse_packet, frame)
    if packet is not None:
        only_frame_error(parse_nd, packet.upper)
        only_frame_error(
            validate_nd, packet.ipv6.hop_limit, packet.ipv6.src, packet.ipv6.dst, packet.upper
        )


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_frame_error(data: bytes):
    only_frame_error(parse_packet, data)
    only_frame_error(parse_nd, data)
    only_frame_error(validate_nd, 255, bytes(16), bytes(16), data)
    only_frame_error(validate_nd, 255, LINK_LOCAL + bytes(8), solicited_node(data[:16]), data)


@SETTINGS
@given(
    payload=st.binary(max_size=300),
    src=addresses,
    dst=addresses,
    next_header=st.sampled_from([58, 58, 58, 0, 43, 44, 51, 59, 60]),
    payload_length=st.none() | u16,
)
def test_arbitrary_payload_behind_valid_ipv6_header_raises_only_frame_error(
    payload: bytes, src: bytes, dst: bytes, next_header: int, payload_length: int | None
):
    exercise_parsers(
        ipv6_frame(
            payload, src=src, dst=dst, next_header=next_header, payload_length=payload_length
        )
    )


nd_shaped_payloads = st.tuples(
    st.sampled_from([133, 134, 135, 136, 137]),
    st.sampled_from([0, 0, 0, 1]),
    st.binary(max_size=120),
).map(lambda parts: bytes(parts[:2]) + b"\x00\x00" + parts[2])


def fix_checksum(src: bytes, dst: bytes, icmp: bytes) -> bytes:
    icmp = icmp[:2] + b"\x00\x00" + icmp[4:]
    return icmp[:2] + upper_layer_checksum(src, dst, 58, icmp).to_bytes(2, "big") + icmp[4:]


@SETTINGS
@given(payload=nd_shaped_payloads, src=addresses, dst=addresses, good_checksum=st.booleans())
def test_nd_shaped_payload_raises_only_frame_error(
    payload: bytes, src: bytes, dst: bytes, good_checksum: bool
):
    if good_checksum:
        payload = fix_checksum(src, dst, payload)
    exercise_parsers(ipv6_frame(payload, src=src, dst=dst))


# --- b) round trips ------------------------------------------------------------------


@SETTINGS
@given(messages)
def test_encode_then_parse_gives_the_same_message(message: NDMessage):
    encoded = encode_nd(message)
    assert parse_nd(encoded) == message
    assert encode_nd(parse_nd(encoded)) == encoded


@SETTINGS
@given(messages, addresses, addresses)
def test_encode_with_checksum_then_parse(message: NDMessage, src: bytes, dst: bytes):
    encoded = encode_nd(message, src, dst)
    assert verify_upper_layer(src, dst, 58, encoded)
    assert parse_nd(encoded) == with_checksum(message, src, dst)
    assert encode_nd(parse_nd(encoded)) == encoded


@SETTINGS
@given(options)
def test_every_option_encodes_to_whole_units(option: Option):
    encoded = option.encode()
    assert len(encoded) % 8 == 0
    assert encoded[1] * 8 == len(encoded)
    assert encoded[0] == option.type


@st.composite
def well_framed_nd(draw: st.DrawFn) -> bytes:
    """Fixed part of random bytes followed by correctly framed options of random bytes."""
    kind = draw(st.sampled_from([133, 134, 135, 136, 137]))
    fixed = {133: 4, 134: 12, 135: 20, 136: 20, 137: 36}[kind]
    body = draw(st.binary(min_size=fixed + 3, max_size=fixed + 3))
    parts = [bytes([kind]), body]
    for option_type, units in draw(st.lists(st.tuples(u8, st.integers(1, 6)), max_size=6)):
        data = draw(st.binary(min_size=units * 8 - 2, max_size=units * 8 - 2))
        parts.append(bytes([option_type, units]) + data)
    return b"".join(parts)


@SETTINGS
@given(well_framed_nd())
def test_parse_then_encode_is_lossless_for_any_well_framed_message(message: bytes):
    assert encode_nd(parse_nd(message)) == message


# --- c) rewriting changes only what RFC 4389 allows -----------------------------------


def _unicast(first: int, rest: bytes) -> bytes:
    """Not multicast (first byte below 0xff) and not the unspecified address."""
    address = bytes([first]) + rest
    return address if any(address) else bytes(15) + b"\x01"


unicast = st.builds(_unicast, st.integers(0, 0xFE), st.binary(min_size=15, max_size=15))
link_local = st.binary(min_size=8, max_size=8).map(lambda tail: LINK_LOCAL + tail)
multicast = st.sampled_from(
    [
        bytes.fromhex("ff020000000000000000000000000001"),
        bytes.fromhex("ff020000000000000000000000000002"),
    ]
)
EXTENSION_HEADERS = {
    # next header 58, length 0, PadN option filling the 6 bytes
    0: bytes([58, 0, 1, 4, 0, 0, 0, 0]),
    60: bytes([58, 0, 1, 4, 0, 0, 0, 0]),
}


def _no_slla(items: tuple[Option, ...]) -> tuple[Option, ...]:
    return tuple(
        option
        for option in items
        if not (isinstance(option, LinkLayerAddressOption) and option.type == 1)
    )


@st.composite
def valid_nd(draw: st.DrawFn) -> tuple[bytes, bytes, NDMessage]:
    """(src, dst, message) that RFC 4861 receive validation accepts."""
    kind = draw(st.sampled_from(["RS", "RA", "NS", "NA", "Redirect"]))
    opts = draw(option_lists)
    src = draw(link_local | unicast)
    dst = draw(unicast | multicast)
    if kind == "RS":
        if draw(st.booleans()):
            src, opts = bytes(16), _no_slla(opts)
        message: NDMessage = RouterSolicitation(opts, draw(u32))
    elif kind == "RA":
        src = draw(link_local)
        message = RouterAdvertisement(*draw(st.tuples(u8, u8, u16, u32, u32)), opts)
    elif kind == "NS":
        target = draw(unicast)
        if draw(st.booleans()):
            src, dst, opts = bytes(16), solicited_node(target), _no_slla(opts)
        message = NeighborSolicitation(target, opts, draw(u32))
    elif kind == "NA":
        flags = draw(u8)
        if dst[0] == 0xFF:
            flags &= ~0x40
        message = NeighborAdvertisement(draw(unicast), flags, opts, draw(u24))
    else:
        src = draw(link_local)
        destination = draw(unicast)
        target = draw(st.just(destination) | link_local)
        message = Redirect(target, destination, opts, draw(u32))
    return src, dst, message


@st.composite
def valid_nd_frames(draw: st.DrawFn) -> tuple[bytes, NDMessage]:
    src, dst, message = draw(valid_nd())
    icmp = encode_nd(message, src, dst)
    extension = draw(st.sampled_from([None, 0, 60]))
    if extension is None:
        next_header, payload = 58, icmp
    else:
        next_header, payload = extension, EXTENSION_HEADERS[extension] + icmp
    frame = ipv6_frame(
        payload, src=src, dst=dst, next_header=next_header, mac_pair=draw(st.tuples(macs, macs))
    )
    return frame, message


def rfc4389_mutable(frame: bytes, icmp_offset: int) -> set[int]:
    """Byte offsets a proxy may change: Ethernet addresses, checksum, RA flags, the
    address of each 1-unit SLLA/TLLA option that holds a unicast address."""
    allowed = {*range(12), icmp_offset + 2, icmp_offset + 3}
    if frame[icmp_offset] == 134:
        allowed.add(icmp_offset + 5)
    offset = icmp_offset + {133: 8, 134: 16, 135: 24, 136: 24, 137: 40}[frame[icmp_offset]]
    while offset < len(frame):
        units = frame[offset + 1]
        if frame[offset] in (1, 2) and units == 1 and not frame[offset + 2] & 1:
            allowed.update(range(offset + 2, offset + 8))
        offset += units * 8
    return allowed


def expected_after_rewrite(message: NDMessage, egress: bytes) -> NDMessage:
    rewritten = tuple(
        LinkLayerAddressOption(option.type, egress)
        if isinstance(option, LinkLayerAddressOption)
        and len(option.address) == 6
        and not option.address[0] & 1
        else option
        for option in message.options
    )
    message = replace(message, options=rewritten)
    if isinstance(message, RouterAdvertisement):
        message = replace(message, flags=message.flags | 0x04)
    return message


def check_rewrite(frame: bytes, egress: bytes, next_hop: bytes) -> NDMessage:
    packet = parse_packet(frame)
    offset = packet.upper_offset
    validate_nd(packet.ipv6.hop_limit, packet.ipv6.src, packet.ipv6.dst, packet.upper)

    out = rewrite_nd(frame, offset, egress, next_hop)

    assert len(out) == len(frame)
    assert out[0:6] == next_hop and out[6:12] == egress
    allowed = rfc4389_mutable(frame, offset)
    changed = {i for i in range(len(frame)) if frame[i] != out[i]}
    assert changed <= allowed, sorted(changed - allowed)
    if frame[offset] == 134:
        assert frame[offset + 5] | 0x04 == out[offset + 5]

    rewritten = parse_packet(out)
    assert rewritten.ipv6.hop_limit == 255
    return validate_nd(255, rewritten.ipv6.src, rewritten.ipv6.dst, rewritten.upper)


@SETTINGS
@given(valid_nd_frames(), macs, macs)
def test_rewrite_changes_only_what_rfc4389_allows(
    frame_and_message: tuple[bytes, NDMessage], egress: bytes, next_hop: bytes
):
    frame, message = frame_and_message
    result = check_rewrite(frame, egress, next_hop)
    packet = parse_packet(frame)
    expected = with_checksum(
        expected_after_rewrite(message, egress), packet.ipv6.src, packet.ipv6.dst
    )
    assert result == expected


@SETTINGS
@given(well_framed_nd(), link_local | unicast, unicast | multicast, macs, macs)
def test_rewrite_of_any_valid_random_message(
    payload: bytes, src: bytes, dst: bytes, egress: bytes, next_hop: bytes
):
    payload = payload[:1] + b"\x00" + payload[2:]  # code 0
    frame = ipv6_frame(fix_checksum(src, dst, payload), src=src, dst=dst)
    message = only_frame_error(validate_nd, 255, src, dst, frame[54:])
    assume(message is not None)  # only what RFC 4861 validation accepts is rewritten
    result = check_rewrite(frame, egress, next_hop)
    assert result == with_checksum(expected_after_rewrite(message, egress), src, dst)


# --- d) checksum ---------------------------------------------------------------------


def naive_ones_complement_sum(data: bytes) -> int:
    """RFC 1071 the slow way: add 16-bit words, folding the carry back in each time."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


checksum_data = st.binary(max_size=200) | st.lists(
    st.sampled_from([0x00, 0xFF, 0x01, 0xFE]), max_size=64
).map(bytes)


@SETTINGS
@given(checksum_data)
@example(b"")
@example(b"\x00")
@example(b"\x01")
@example(b"\xff\xff")
@example(b"\xff\xff\xff\xff")
@example(b"\xff\xff\x00\x01")
@example(b"\x80\x00\x80\x00")
def test_ones_complement_sum_matches_naive_reference(data: bytes):
    assert ones_complement_sum(data) == naive_ones_complement_sum(data)


@st.composite
def upper_layers(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(bytes before a 16-bit aligned checksum field, bytes after it)."""
    before = draw(st.integers(0, 20).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n)))
    after = draw(st.binary(max_size=100))
    return before, after


@SETTINGS
@given(addresses, addresses, u8, upper_layers(), st.data())
def test_verify_accepts_computed_checksum_and_rejects_a_flipped_bit(
    src: bytes, dst: bytes, next_header: int, parts: tuple[bytes, bytes], data: st.DataObject
):
    before, after = parts
    checksum = upper_layer_checksum(src, dst, next_header, before + b"\x00\x00" + after)
    upper = before + checksum.to_bytes(2, "big") + after
    assert verify_upper_layer(src, dst, next_header, upper)

    bit = data.draw(st.integers(0, len(upper) * 8 - 1))
    flipped = bytearray(upper)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    assert not verify_upper_layer(src, dst, next_header, bytes(flipped))


@SETTINGS
@given(addresses, addresses, u8, st.binary(max_size=100))
def test_checksum_is_complement_of_the_pseudo_header_sum(
    src: bytes, dst: bytes, next_header: int, upper: bytes
):
    pseudo = src + dst + len(upper).to_bytes(4, "big") + bytes(3) + bytes([next_header])
    expected = ~naive_ones_complement_sum(pseudo + upper) & 0xFFFF
    assert upper_layer_checksum(src, dst, next_header, upper) == expected


# e) The worker's early answer to a multicast NS is exactly the answer of the full path.


def _answering_engine():
    engine = Engine(lab_topology())
    engine.neighbors.learn("lan", GUEST1, "vm1", GUEST1_MAC, 1.0)
    return engine


@SETTINGS
@example(position=200, value=0, options=b"", ingress="up0", fix=False)
@given(
    position=st.integers(0, 101),
    value=u8,
    options=st.lists(st.tuples(u8, macs), max_size=2).map(
        lambda items: b"".join(bytes([kind, 1]) + body for kind, body in items)
    ),
    ingress=st.sampled_from(["up0", "vm1", "vm2", "vm3"]),
    fix=st.booleans(),
)
def test_early_answer_agrees_with_the_full_path(position, value, options, ingress, fix):
    slla = LinkLayerAddressOption(1, ROUTER_MAC)
    ns = NeighborSolicitation(GUEST1, (slla, *parse_options(options, 0)))
    frame = nd_frame(ROUTER_MAC, None, ROUTER, solicited_node(GUEST1), ns)
    if position < len(frame):  # one byte anywhere changed: addresses, lengths, options...
        frame = frame[:position] + bytes([value]) + frame[position + 1 :]
    if fix:  # ... and, half of the time, the checksum made right for what is left
        icmp = frame[54:] + b"\x00" * max(0, 32 - len(frame[54:]))
        icmp = icmp[:2] + b"\x00\x00" + icmp[4:]
        checksum = upper_layer_checksum(frame[22:38], frame[38:54], 58, icmp)
        frame = frame[:56] + checksum.to_bytes(2, "big") + frame[58:]
    engine = _answering_engine()
    answers = EarlyAnswers()
    answers.publish(build_answer_table(engine.topology, engine.neighbors, ingress))
    answer = answers.answer(frame, 2.0)
    early = None if answer is None else Transmit(ingress, answer)
    full = [
        action
        for action in _answering_engine().handle_frame(ingress, frame, 2.0)
        if isinstance(action, Transmit) and action.interface == ingress
    ]
    if early is None:
        # Either nothing was answered, or the layout is one only the full path reads.
        assert not full or frame[20] != 58
    else:
        assert full == [early]
    if position >= len(frame) and ingress == "up0" and not fix:
        assert early is not None  # the untouched NS is answered


@st.composite
def solicitations(draw: st.DrawFn) -> tuple[int, bytes, bytes, bytes]:
    """(hop limit, src, dst, icmp) of NS-typed messages: valid ones, then broken ones."""
    target = draw(unicast | multicast | frame_addresses)
    options = draw(option_lists)
    if draw(st.booleans()):
        slla = LinkLayerAddressOption(1, draw(macs | blocks(1, 2, extra=6)))
        options = (*options[:1], slla, *options[1:])
    if draw(st.booleans()):  # a DAD probe, or something like one
        src, dst = bytes(16), draw(st.just(solicited_node(target)) | frame_addresses)
    else:
        src = draw(link_local | unicast | multicast | frame_addresses)
        dst = draw(multicast | unicast | st.just(solicited_node(target)))
    message = NeighborSolicitation(target, options, draw(u32))
    icmp = encode_nd(message, src, dst)
    if draw(st.booleans()):
        position = draw(st.integers(1, len(icmp) - 1))  # the type stays NS
        icmp = icmp[:position] + bytes([draw(u8)]) + icmp[position + 1 :]
        if draw(st.booleans()):
            icmp = fix_checksum(src, dst, icmp)
    if draw(st.booleans()):
        icmp = icmp[: draw(st.integers(1, len(icmp)))]
    return draw(st.sampled_from([255, 255, 254, 0])), src, dst, icmp


@SETTINGS
@given(solicitations())
def test_the_early_ns_check_gives_validate_nds_verdict(solicitation):
    hop_limit, src, dst, icmp = solicitation
    message = only_frame_error(validate_nd, hop_limit, src, dst, icmp)
    asker_mac = solicitation_asker_mac(hop_limit, src, dst, icmp)
    event("accepted" if message is not None else "rejected")
    if message is None:
        assert asker_mac is None
    else:
        slla = [
            option.address
            for option in message.options
            if isinstance(option, LinkLayerAddressOption)
            and option.type == 1
            and len(option.address) == 6
            and not option.address[0] & 1
        ]
        assert asker_mac == (slla[0] if slla else b"")


# --- f) Engine.handle_frame itself, on arbitrary frames -------------------------------

KNOWN_MACS = [UP_MAC, VM1_MAC, VM2_MAC, OTHER_MAC, ROUTER_MAC, GUEST1_MAC, GUEST2_MAC]
frame_macs = st.sampled_from([*KNOWN_MACS, multicast_mac(ALL_NODES), b"\xff" * 6]) | macs
frame_addresses = (
    st.sampled_from(
        [ROUTER, ROUTER_LL, GUEST1, GUEST2, GUEST3, REMOTE, PROXY_UP_LL, ALL_NODES, bytes(16)]
    )
    | st.builds(solicited_node, st.sampled_from([GUEST1, GUEST2, ROUTER]))
    | link_local
    | unicast
    | addresses
)
INGRESSES = ["up0", "vm1", "vm2", "vm3", "unbound0"]


@st.composite
def near_valid_nd_frames(draw: st.DrawFn) -> bytes:
    """A valid ND message between known hosts, often with one byte then changed."""
    src, dst, message = draw(valid_nd())
    if draw(st.booleans()):
        src = draw(frame_addresses)
    if draw(st.booleans()):
        dst = draw(frame_addresses)
    if draw(st.booleans()) and isinstance(message, NeighborSolicitation | NeighborAdvertisement):
        message = replace(message, target=draw(frame_addresses))
    icmp = encode_nd(message, src, dst)
    extension = draw(st.sampled_from([None, None, 0, 60]))
    payload = icmp if extension is None else EXTENSION_HEADERS[extension] + icmp
    frame = ipv6_frame(
        payload,
        src=src,
        dst=dst,
        next_header=58 if extension is None else extension,
        mac_pair=(draw(frame_macs), draw(frame_macs)),
    )
    if draw(st.booleans()):  # one byte anywhere changed
        position = draw(st.integers(0, len(frame) - 1))
        frame = frame[:position] + bytes([draw(u8)]) + frame[position + 1 :]
    return frame


@st.composite
def data_frames(draw: st.DrawFn) -> bytes:
    """IPv6 data between known and unknown hosts, any next header, any length field."""
    payload = draw(st.binary(max_size=120))
    near = st.integers(-3, 3).map(lambda delta: max(0, len(payload) + delta))
    return ipv6_frame(
        payload,
        src=draw(frame_addresses),
        dst=draw(frame_addresses),
        next_header=draw(st.sampled_from([6, 17, 58, 0, 43, 44, 51, 59, 60])),
        hop_limit=draw(u8),
        payload_length=draw(st.none() | near | u16),
        mac_pair=(draw(frame_macs), draw(frame_macs)),
    ) + draw(st.binary(max_size=8))  # Ethernet padding, sometimes


any_frames = st.one_of(near_valid_nd_frames(), data_frames(), st.binary(max_size=200))


def _busy_engine() -> Engine:
    """The lab, its router and guests known, the prefix on-link, vm2's MTU smaller."""
    topology = lab_topology()
    topology.update_link("vm2", mtu=1280)
    engine = Engine(topology)
    engine.neighbors.learn("lan", GUEST1, "vm1", GUEST1_MAC, 1.0)
    engine.neighbors.learn("lan", GUEST2, "vm2", GUEST2_MAC, 1.0)
    engine.neighbors.learn("lan", ROUTER, "up0", ROUTER_MAC, 1.0, is_router=True)
    engine.neighbors.learn("other", GUEST3, "vm3", GUEST3_MAC, 1.0)
    topology.groups["lan"].onlink_prefixes[(PREFIX, 64)] = 1e9
    return engine


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(INGRESSES),
            any_frames,
            st.sampled_from(["as drawn", "to the ingress", "to its multicast"]),
            st.booleans(),
            st.sampled_from([0, 1500]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_handle_frame_on_arbitrary_frames(received):
    """Nothing raises; every drop has a reason; every frame goes to a known, forwarding
    member of the ingress's group other than the ingress, except the proxy's own answers
    and Packet Too Big, which go back to the sender."""
    engine = _busy_engine()
    topology = engine.topology
    now = 2.0
    for ingress, frame, addressed, answered, segment in received:
        now += 0.4
        if len(frame) >= 54 and addressed != "as drawn":  # mostly past the MAC check
            iface = topology.interfaces.get(ingress)
            if addressed == "to the ingress" and iface is not None:
                frame = iface.mac + frame[6:]
            elif addressed == "to its multicast":
                frame = multicast_mac(frame[38:54]) + frame[6:]
        released, solicited = engine.counters["released"], engine.counters["solicits_sent"]
        actions = engine.handle_frame(ingress, frame, now, segment_bytes=segment, answered=answered)
        released = engine.counters["released"] > released
        # Holding one frame re-solicits every destination due, held from any member: the
        # proxy's NS for one held elsewhere may go out of this ingress (never the
        # received NS itself: that one asks for the target the frame names).
        solicited = engine.counters["solicits_sent"] > solicited
        asked = frame[62:78] if len(frame) >= 78 and frame[54] == 135 else None
        for action in actions:
            check_action(topology, action, ingress, released, solicited, asked)
        for action in engine.poll(now):  # solicitations and timeouts of held frames
            check_action(topology, action, None, False, True, None)


def check_action(
    topology,
    action,
    ingress: str | None,
    released: bool,
    solicited: bool,
    asked: bytes | None,
) -> None:
    assert isinstance(
        action,
        Dropped
        | Transmit
        | Learned
        | Claimed
        | Expired
        | LoopDetected
        | LoopCleared
        | PrefixLearned,
    ), action
    event(type(action).__name__)  # --hypothesis-show-statistics: what the inputs reach
    if isinstance(action, Dropped):
        assert isinstance(action.reason, DropReason) and action.frames >= 1
        event(f"dropped: {action.reason.value}")
        return
    if not isinstance(action, Transmit):
        return
    egress = topology.interfaces.get(action.interface)
    assert egress is not None, f"sent out of unknown {action.interface}"
    out = action.frame
    assert out[6:12] == egress.mac  # always from the egress's own MAC
    assert egress.enabled and egress.group is not None
    if ingress is None:  # from the timers: only the proxy's own NS for a held frame
        assert out[20] == 58 and out[54] == 135, out[:60].hex()
    elif action.interface == ingress:
        # Back out of the ingress only what the proxy says itself (an NA answering an NS,
        # a Packet Too Big, its NS for a frame held from another member), or a frame held
        # from another member that this one released.
        own_ns = solicited and out[54] == 135 and out[62:78] != asked
        assert (out[20] == 58 and (out[54] in (136, 2) or own_ns)) or released, out[:60].hex()
    elif not (solicited and out[20] == 58 and out[54] == 135 and out[62:78] != asked):
        # Within the ingress's group, except the proxy's NS for a destination due that
        # was held in another group: holding one frame re-solicits all of them.
        assert egress.group == topology.interfaces[ingress].group


FRAME_REASONS = {
    DropReason.FRAME_TOO_SHORT,
    DropReason.NOT_IPV6,
    DropReason.BAD_IP_VERSION,
    DropReason.TRUNCATED,
    DropReason.BAD_EXTENSION_HEADER,
}


@SETTINGS
@given(st.one_of(data_frames(), near_valid_nd_frames(), st.binary(max_size=120)))
def test_handle_frames_framing_checks_are_parse_packets(frame):
    """The engine reads the frame in place, by frame.py's offsets, with the same verdicts
    as parse_packet (for a frame past the MAC checks: multicast, from a stranger)."""
    if len(frame) >= 12:
        frame = multicast_mac(ALL_NODES) + ROUTER_MAC + frame[12:]
    try:
        parse_packet(frame)
        expected = None
    except FrameError as exc:
        expected = exc.reason
    actions = _busy_engine().handle_frame("up0", frame, 2.0)
    reasons = {a.reason for a in actions if isinstance(a, Dropped)} & FRAME_REASONS
    assert reasons == ({expected} if expected is not None else set())


# --- g) ownership: no entry changes owner without a failed owner check ------------------

OWNED = [GUEST1, GUEST2, ROUTER]


@st.composite
def claims_of_owned(draw: st.DrawFn) -> bytes:
    """An NA, DAD probe or data packet naming an address the busy engine has an owner for."""
    target = draw(st.sampled_from(OWNED))
    mac = draw(st.sampled_from([GUEST1_MAC, GUEST2_MAC, ROUTER_MAC]))
    kind = draw(st.sampled_from(["na", "dad", "data"]))
    if kind == "data":
        return ipv6_frame(b"x" * 8, src=target, dst=REMOTE, next_header=17, mac_pair=(VM1_MAC, mac))
    if kind == "dad":
        src, dst = bytes(16), solicited_node(target)
        message: Any = NeighborSolicitation(target)
    else:
        src, dst = target, ALL_NODES
        message = NeighborAdvertisement(target, 0x20)
    icmp = encode_nd(message, src, dst)
    return ipv6_frame(icmp, src=src, dst=dst, next_header=58, mac_pair=(multicast_mac(dst), mac))


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(INGRESSES),
            any_frames | claims_of_owned(),
            st.sampled_from(["as drawn", "to the ingress", "to its multicast"]),
            st.sampled_from(["answers", "is silent"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_no_owner_changes_without_a_failed_owner_check(received):
    """Arbitrary frames from arbitrary members, with the supervisor's OwnerChecks in the
    loop as the worker reports feed it: an entry's owner changes only when its check ran
    out with the owner silent; nothing raises."""
    engine = _busy_engine()
    topology = engine.topology
    checks = OwnerChecks(topology, engine.neighbors, probe_s=1.0)
    now = 2.0
    for ingress, frame, addressed, owner in received:
        now += 0.4
        if len(frame) >= 54 and addressed != "as drawn":
            iface = topology.interfaces.get(ingress)
            if addressed == "to the ingress" and iface is not None:
                frame = iface.mac + frame[6:]
            elif addressed == "to its multicast":
                frame = multicast_mac(frame[38:54]) + frame[6:]
        owners = {(e.group, e.address): (e.interface, e.mac) for e in engine.neighbors}
        actions = engine.handle_frame(ingress, frame, now)
        for action in actions:
            if isinstance(action, Claimed):
                probe = checks.claim(
                    action.group, action.address, action.interface, action.mac, now
                )
                event(f"claim: {type(probe).__name__}")
                if isinstance(probe, Probe):
                    assert engine.probe(probe.group, probe.address), "a probe goes out"
            elif isinstance(action, Learned):
                entry = engine.neighbors.get(action.neighbor.group, action.neighbor.address)
                if entry is not None and entry.owned_by(
                    action.neighbor.interface, action.neighbor.mac
                ):
                    checks.owner_seen(entry)
        for entry in engine.neighbors:
            before = owners.get((entry.group, entry.address))
            assert before is None or before == (entry.interface, entry.mac), entry
        if owner == "answers":  # the owner of every entry being checked answers it
            for entry in engine.neighbors:
                settled = checks.owner_seen(entry)
                assert settled is None or settled.outcome is ClaimOutcome.REFUSED
        owners = {(e.group, e.address): (e.interface, e.mac, e.claimant) for e in engine.neighbors}
        due = checks.due(now + 1.0)
        for settled in due:
            event(f"settled: {settled.outcome.value}")
        moved = {(s.neighbor.group, s.neighbor.address) for s in due}
        for entry in engine.neighbors:
            key = (entry.group, entry.address)
            interface, mac, claimant = owners.get(key, (entry.interface, entry.mac, ""))
            if (interface, mac) != (entry.interface, entry.mac):
                assert key in moved and entry.interface == claimant, entry
        now += 1.0
