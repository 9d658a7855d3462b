"""Named reasons why a frame was not forwarded.

Each value is a stable, short label: workers count drops by it and the metrics export
it as the `reason` label, so the set is bounded and the names never change meaning.
"""

from __future__ import annotations

from enum import StrEnum


class DropReason(StrEnum):
    # Frame and IPv6 header
    FRAME_TOO_SHORT = "frame_too_short"
    NOT_IPV6 = "not_ipv6"
    BAD_IP_VERSION = "bad_ip_version"
    TRUNCATED = "truncated"
    BAD_EXTENSION_HEADER = "bad_extension_header"
    # Neighbor Discovery receive validation (RFC 4861 §6.1, §7.1, §8.1; RFC 6980)
    NOT_ND_MESSAGE = "not_nd_message"
    ND_FRAGMENTED = "nd_fragmented"
    ND_ROUTING_HEADER = "nd_routing_header"
    HOP_LIMIT_NOT_255 = "hop_limit_not_255"
    BAD_CODE = "bad_code"
    BAD_CHECKSUM = "bad_checksum"
    MESSAGE_TOO_SHORT = "message_too_short"
    ZERO_LENGTH_OPTION = "zero_length_option"
    TRUNCATED_OPTION = "truncated_option"
    UNSPECIFIED_SOURCE_WITH_SLLA = "unspecified_source_with_slla"
    RA_SOURCE_NOT_LINK_LOCAL = "ra_source_not_link_local"
    TARGET_MULTICAST = "target_multicast"
    DAD_DESTINATION_NOT_SOLICITED_NODE = "dad_destination_not_solicited_node"
    NA_SOLICITED_TO_MULTICAST = "na_solicited_to_multicast"
    REDIRECT_SOURCE_NOT_LINK_LOCAL = "redirect_source_not_link_local"
    REDIRECT_DESTINATION_MULTICAST = "redirect_destination_multicast"
    REDIRECT_BAD_TARGET = "redirect_bad_target"
    MULTICAST_SOURCE = "multicast_source"
    # Forwarding decisions
    UNKNOWN_INTERFACE = "unknown_interface"
    INGRESS_DISABLED = "ingress_disabled"
    NOT_FOR_US = "not_for_us"
    OWN_FRAME = "own_frame"
    LOCAL_DESTINATION = "local_destination"
    LOOP_DETECTED = "loop_detected"
    HAIRPIN = "hairpin"
    EGRESS_DISABLED = "egress_disabled"
    NO_EGRESS = "no_egress"
    MTU_EXCEEDED = "mtu_exceeded"
    HOLD_QUEUE_FULL = "hold_queue_full"
    HOLD_TIMEOUT = "hold_timeout"
    UNSPECIFIED_DESTINATION = "unspecified_destination"
    # Address ownership (ownership.py)
    CLAIM_REFUSED = "claim_refused"  # ND claiming an address another member owns
    SOURCE_INVALID = "source_invalid"  # data from an address another member owns
    OVER_QUOTA = "over_quota"  # a new address from a member that owns all it may
    # Worker I/O
    SOCKET_OVERFLOW = "socket_overflow"


class FrameError(ValueError):
    """The codec's own parse error: the bytes are not a frame or message we accept."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
