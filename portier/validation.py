"""RFC 4861 receive validation of Neighbor Discovery messages (§6.1.1, §6.1.2, §7.1.1,
§7.1.2, §8.1) and RFC 6980's ban on fragmented ND.

`validate_nd` either returns the parsed message or raises `FrameError` whose reason
names the first rule the message broke.  The checks run cheapest first.  Each rule is
written once, below, as a function of plain values that gives the reason it is broken or
None; `validate_nd` applies them to a parsed message, and `solicitation_asker_mac`, the
early answer's check of an NS, applies the very same functions to the bytes without
building a message (tests hold the two to the same verdicts).
"""

from __future__ import annotations

from portier.addresses import is_link_local, is_multicast, is_solicited_node, is_unspecified
from portier.checksum import verify_upper_layer
from portier.drops import DropReason, FrameError
from portier.frame import NH_ICMPV6
from portier.ndmsg import (
    CODE_OFFSET,
    MIN_LENGTH,
    TARGET_OFFSET,
    LinkLayerAddressOption,
    NDMessage,
    NDType,
    NeighborAdvertisement,
    NeighborSolicitation,
    OptionType,
    Redirect,
    iter_option_spans,
    parse_nd,
)

ND_HOP_LIMIT = 255
_NS_MIN_LENGTH = MIN_LENGTH[NDType.NEIGHBOR_SOLICITATION]
_TARGET = slice(TARGET_OFFSET, TARGET_OFFSET + 16)


# --- the rules -------------------------------------------------------------------------


def header_rule(hop_limit: int, icmp: bytes) -> DropReason | None:
    """§6.1, §7.1, §8.1: hop limit 255 (the message comes from the link), code 0."""
    if hop_limit != ND_HOP_LIMIT:
        return DropReason.HOP_LIMIT_NOT_255
    if len(icmp) > CODE_OFFSET and icmp[CODE_OFFSET] != 0:
        return DropReason.BAD_CODE
    return None


def integrity_rule(src: bytes, dst: bytes, icmp: bytes) -> DropReason | None:
    """A valid ICMPv6 checksum, and a source that is not multicast."""
    if not verify_upper_layer(src, dst, NH_ICMPV6, icmp):
        return DropReason.BAD_CHECKSUM
    if is_multicast(src):
        return DropReason.MULTICAST_SOURCE
    return None


def solicitation_rule(src: bytes, dst: bytes, target: bytes, has_slla: bool) -> DropReason | None:
    """§7.1.1: the target is not multicast; a DAD probe goes to a solicited-node address
    and carries no source link-layer address."""
    if is_multicast(target):
        return DropReason.TARGET_MULTICAST
    if is_unspecified(src):
        if not is_solicited_node(dst):
            return DropReason.DAD_DESTINATION_NOT_SOLICITED_NODE
        if has_slla:
            return DropReason.UNSPECIFIED_SOURCE_WITH_SLLA
    return None


def advertisement_rule(dst: bytes, target: bytes, solicited: bool) -> DropReason | None:
    if is_multicast(target):
        return DropReason.TARGET_MULTICAST
    if is_multicast(dst) and solicited:
        return DropReason.NA_SOLICITED_TO_MULTICAST
    return None


def router_advertisement_rule(src: bytes) -> DropReason | None:
    return None if is_link_local(src) else DropReason.RA_SOURCE_NOT_LINK_LOCAL


def router_solicitation_rule(src: bytes, has_slla: bool) -> DropReason | None:
    return DropReason.UNSPECIFIED_SOURCE_WITH_SLLA if is_unspecified(src) and has_slla else None


def redirect_rule(src: bytes, target: bytes, destination: bytes) -> DropReason | None:
    if not is_link_local(src):
        return DropReason.REDIRECT_SOURCE_NOT_LINK_LOCAL
    if is_multicast(destination):
        return DropReason.REDIRECT_DESTINATION_MULTICAST
    if not (is_link_local(target) or target == destination):
        return DropReason.REDIRECT_BAD_TARGET
    return None


# --- the full check --------------------------------------------------------------------


def _has_slla(message: NDMessage) -> bool:
    return any(
        isinstance(option, LinkLayerAddressOption) and option.type == OptionType.SOURCE_LINK_LAYER
        for option in message.options
    )


def _kind_rule(src: bytes, dst: bytes, message: NDMessage) -> DropReason | None:
    kind = message.type
    if kind == NDType.NEIGHBOR_SOLICITATION:
        assert isinstance(message, NeighborSolicitation)
        # Whether an SLLA is present matters only for a DAD probe: looked for only then.
        return solicitation_rule(
            src, dst, message.target, is_unspecified(src) and _has_slla(message)
        )
    if kind == NDType.NEIGHBOR_ADVERTISEMENT:
        assert isinstance(message, NeighborAdvertisement)
        return advertisement_rule(dst, message.target, message.solicited)
    if kind == NDType.ROUTER_ADVERTISEMENT:
        return router_advertisement_rule(src)
    if kind == NDType.ROUTER_SOLICITATION:
        return router_solicitation_rule(src, is_unspecified(src) and _has_slla(message))
    assert isinstance(message, Redirect)
    return redirect_rule(src, message.target, message.destination)


def validate_nd(hop_limit: int, src: bytes, dst: bytes, icmp: bytes) -> NDMessage:
    """Validate the ICMPv6 ND message `icmp` carried from `src` to `dst`."""
    reason = header_rule(hop_limit, icmp)
    if reason is not None:
        detail = f"hop limit {hop_limit}" if reason == DropReason.HOP_LIMIT_NOT_255 else ""
        raise FrameError(reason, detail or f"code {icmp[CODE_OFFSET]}")
    message = parse_nd(icmp)
    reason = integrity_rule(src, dst, icmp) or _kind_rule(src, dst, message)
    if reason is not None:
        detail = f"checksum 0x{message.checksum:04x}" if reason == DropReason.BAD_CHECKSUM else ""
        raise FrameError(reason, detail)
    return message


# --- the early answer's check of an NS ---------------------------------------------------


def solicitation_asker_mac(hop_limit: int, src: bytes, dst: bytes, icmp: bytes) -> bytes | None:
    """For an NS (`icmp[0]` is 135) that `validate_nd` accepts: the asker's MAC from its
    first 6-byte unicast SLLA option, or b"" when it has none; None for any NS that
    `validate_nd` rejects.  The same rules, on the bytes."""
    if header_rule(hop_limit, icmp) is not None or len(icmp) < _NS_MIN_LENGTH:
        return None  # (the length: parse_nd's check)
    asker_mac = b""
    has_slla = False
    try:  # parse_nd's option framing
        for kind, offset, length in iter_option_spans(icmp, _NS_MIN_LENGTH):
            if kind == OptionType.SOURCE_LINK_LAYER:
                has_slla = True
                if not asker_mac and length == 8 and not icmp[offset + 2] & 1:
                    asker_mac = icmp[offset + 2 : offset + 8]
    except FrameError:
        return None
    if (
        integrity_rule(src, dst, icmp) is not None
        or solicitation_rule(src, dst, icmp[_TARGET], has_slla) is not None
    ):
        return None
    return asker_mac
