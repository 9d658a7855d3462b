"""RFC 4861 receive validation of Neighbor Discovery messages (§6.1.1, §6.1.2, §7.1.1,
§7.1.2, §8.1) and RFC 6980's ban on fragmented ND.

`validate_nd` either returns the parsed message or raises `FrameError` whose reason
names the first rule the message broke.  The checks run cheapest first.
"""

from __future__ import annotations

from portier.addresses import is_link_local, is_multicast, is_solicited_node, is_unspecified
from portier.checksum import verify_upper_layer
from portier.drops import DropReason, FrameError
from portier.frame import NH_ICMPV6
from portier.ndmsg import (
    LinkLayerAddressOption,
    NDMessage,
    NDType,
    NeighborAdvertisement,
    NeighborSolicitation,
    OptionType,
    Redirect,
    parse_nd,
)

ND_HOP_LIMIT = 255


def _has_slla(message: NDMessage) -> bool:
    return any(
        isinstance(option, LinkLayerAddressOption) and option.type == OptionType.SOURCE_LINK_LAYER
        for option in message.options
    )


def validate_nd(hop_limit: int, src: bytes, dst: bytes, icmp: bytes) -> NDMessage:
    """Validate the ICMPv6 ND message `icmp` carried from `src` to `dst`."""
    if hop_limit != ND_HOP_LIMIT:
        raise FrameError(DropReason.HOP_LIMIT_NOT_255, f"hop limit {hop_limit}")
    if len(icmp) >= 2 and icmp[1] != 0:
        raise FrameError(DropReason.BAD_CODE, f"code {icmp[1]}")
    message = parse_nd(icmp)
    if not verify_upper_layer(src, dst, NH_ICMPV6, icmp):
        raise FrameError(DropReason.BAD_CHECKSUM, f"checksum 0x{message.checksum:04x}")
    if is_multicast(src):
        raise FrameError(DropReason.MULTICAST_SOURCE)
    kind = message.type
    if kind == NDType.NEIGHBOR_SOLICITATION:
        assert isinstance(message, NeighborSolicitation)
        if is_multicast(message.target):
            raise FrameError(DropReason.TARGET_MULTICAST)
        if is_unspecified(src):
            if not is_solicited_node(dst):
                raise FrameError(DropReason.DAD_DESTINATION_NOT_SOLICITED_NODE)
            if _has_slla(message):
                raise FrameError(DropReason.UNSPECIFIED_SOURCE_WITH_SLLA)
    elif kind == NDType.NEIGHBOR_ADVERTISEMENT:
        assert isinstance(message, NeighborAdvertisement)
        if is_multicast(message.target):
            raise FrameError(DropReason.TARGET_MULTICAST)
        if is_multicast(dst) and message.solicited:
            raise FrameError(DropReason.NA_SOLICITED_TO_MULTICAST)
    elif kind == NDType.ROUTER_ADVERTISEMENT:
        if not is_link_local(src):
            raise FrameError(DropReason.RA_SOURCE_NOT_LINK_LOCAL)
    elif kind == NDType.ROUTER_SOLICITATION:
        if is_unspecified(src) and _has_slla(message):
            raise FrameError(DropReason.UNSPECIFIED_SOURCE_WITH_SLLA)
    else:
        assert isinstance(message, Redirect)
        if not is_link_local(src):
            raise FrameError(DropReason.REDIRECT_SOURCE_NOT_LINK_LOCAL)
        if is_multicast(message.destination):
            raise FrameError(DropReason.REDIRECT_DESTINATION_MULTICAST)
        if not (is_link_local(message.target) or message.target == message.destination):
            raise FrameError(DropReason.REDIRECT_BAD_TARGET)
    return message
