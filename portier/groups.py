"""Bound interfaces, proxy groups, upstream roles and disable reasons.

The rules (kept in this one module): an interface belongs to at most one group; a group
has at most one upstream, which must be a member; a member forwards only while its set of
disable reasons is empty.  Soft reasons (software-disabled, loop-detected) are the
operator's to clear; hard reasons (link-down, groupless, not-present) clear only when
their cause goes away.  Loop-disables expire at a time given by `now`, never by a clock
read here.  Unlike the original, leaving a group or releasing a group clears a pending
loop-disable, so a member can never stay disabled for ever.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from portier.status import OK, Code, Status

IFNAMSIZ = 16
GROUP_NAME_MAX = 64
_GROUP_NAME = re.compile(r"[A-Za-z0-9_-]+")
DEFAULT_LOOP_DISABLE_S = 3600.0


class DisableReason(StrEnum):
    SOFTWARE_DISABLED = "software_disabled"
    LOOP_DETECTED = "loop_detected"
    LINK_DOWN = "link_down"
    GROUPLESS = "groupless"
    NOT_PRESENT = "not_present"


SOFT_REASONS = frozenset({DisableReason.SOFTWARE_DISABLED, DisableReason.LOOP_DETECTED})


def check_interface_name(name: object) -> Status:
    """Linux's rules for a device name (dev_valid_name), as a Status."""
    if not isinstance(name, str) or not name:
        return Status(Code.INVALID_ARGUMENT, "Interface name must be a non-empty string")
    if len(name.encode()) >= IFNAMSIZ:
        return Status(Code.INVALID_ARGUMENT, f"Interface name {name!r} is longer than 15 bytes")
    if name in (".", "..") or any(ch in name for ch in "/:") or any(ch.isspace() for ch in name):
        return Status(Code.INVALID_ARGUMENT, f"Interface name {name!r} has invalid characters")
    if not name.isprintable():
        return Status(Code.INVALID_ARGUMENT, f"Interface name {name!r} has invalid characters")
    return OK


PATTERN_CHARACTERS = frozenset("*?[")


def is_pattern(name: str) -> bool:
    """A member entry with shell wildcards (fnmatch) names interfaces yet to appear."""
    return any(ch in PATTERN_CHARACTERS for ch in name)


def check_member_pattern(pattern: object) -> Status:
    """A pattern obeys the name rules except for its wildcards (it can never be one)."""
    if not isinstance(pattern, str) or not is_pattern(pattern):
        return Status(Code.INVALID_ARGUMENT, f"{pattern!r} is not a pattern (no *, ? or [)")
    if len(pattern.encode()) > 64:
        return Status(Code.INVALID_ARGUMENT, f"Pattern {pattern!r} is longer than 64 bytes")
    if any(ch in pattern for ch in "/:") or not pattern.isprintable() or " " in pattern:
        return Status(Code.INVALID_ARGUMENT, f"Pattern {pattern!r} has invalid characters")
    return OK


def check_group_name(name: object) -> Status:
    if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
        return Status(
            Code.INVALID_ARGUMENT,
            f"Group name {name!r} must be letters, digits, '_' or '-', and not empty",
        )
    if len(name) > GROUP_NAME_MAX:
        return Status(Code.INVALID_ARGUMENT, f"Group name is longer than {GROUP_NAME_MAX}")
    return OK


@dataclass(slots=True)
class Interface:
    """A bound interface: what the kernel says of it, and why it does not forward."""

    name: str
    ifindex: int = 0
    mac: bytes = b""
    mtu: int = 1500
    addresses: frozenset[bytes] = frozenset()
    group: str | None = None
    # Until the kernel's view of it arrives (ifindex, MAC) it cannot be an egress.
    disable_reasons: set[DisableReason] = field(
        default_factory=lambda: {DisableReason.GROUPLESS, DisableReason.NOT_PRESENT}
    )
    loop_disabled_until: float | None = None
    # Cached `not disable_reasons`, read once per frame on the packet path.
    enabled: bool = False
    # The member pattern that bound it (it goes when its link goes), None if named.
    bound_by: str | None = None

    def _sync(self) -> None:
        self.enabled = not self.disable_reasons


@dataclass(slots=True)
class Group:
    name: str
    members: list[str] = field(default_factory=list)
    upstream: str | None = None
    # On-link prefixes learned from the upstream's RAs: (prefix, length) -> valid until.
    onlink_prefixes: dict[tuple[bytes, int], float] = field(default_factory=dict)
    # Address ownership (ownership.py); off makes the group last-writer-wins.
    ownership: bool = True
    # Member patterns: interfaces whose names match are bound while they exist.
    patterns: list[str] = field(default_factory=list)


class Topology:
    """Interfaces and groups with the membership rules; every change returns a Status."""

    def __init__(
        self,
        *,
        nested: bool = False,
        loop_disable_s: float = DEFAULT_LOOP_DISABLE_S,
        last_writer_wins: frozenset[str] = frozenset(),
    ):
        self.interfaces: dict[str, Interface] = {}
        self.groups: dict[str, Group] = {}
        self.nested = nested
        self.loop_disable_s = loop_disable_s
        # The kernel's BPF path answers the usual multicast NS itself (answers.py).
        self.kernel_answers = False
        # Groups created with address ownership switched off (ownership.py).
        self.last_writer_wins = last_writer_wins
        self._own_macs: frozenset[bytes] | None = None

    # --- binding -----------------------------------------------------------------

    def bind(self, name: str) -> Status:
        status = check_interface_name(name)
        if not status:
            return status
        if name in self.interfaces:
            return Status(Code.ALREADY_EXISTS, f"Interface {name} is already bound")
        self.interfaces[name] = Interface(name)
        return OK

    def update_link(
        self,
        name: str,
        *,
        ifindex: int | None = None,
        mac: bytes | None = None,
        mtu: int | None = None,
        addresses: Iterable[bytes] | None = None,
    ) -> Status:
        """Record what the kernel says of a bound interface (from netlink)."""
        interface = self.interfaces.get(name)
        if interface is None:
            return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound")
        if ifindex is not None:
            interface.ifindex = ifindex
            if ifindex:
                interface.disable_reasons.discard(DisableReason.NOT_PRESENT)
            else:
                interface.disable_reasons.add(DisableReason.NOT_PRESENT)
            interface._sync()
        if mac is not None:
            interface.mac = mac
            self._own_macs = None
        if mtu is not None:
            interface.mtu = mtu
        if addresses is not None:
            interface.addresses = frozenset(addresses)
        return OK

    def invalidate(self) -> None:
        """Forget derived data after the interfaces were replaced wholesale."""
        self._own_macs = None

    def own_macs(self) -> frozenset[bytes]:
        """MACs of every bound interface: a frame from one of them is our own echo."""
        if self._own_macs is None:
            self._own_macs = frozenset(i.mac for i in self.interfaces.values() if i.mac)
        return self._own_macs

    def release(self, name: str) -> Status:
        if name not in self.interfaces:
            return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound")
        if self.interfaces[name].group is not None:
            self.remove_from_group(name)
        del self.interfaces[name]
        self._own_macs = None
        return OK

    # --- groups ------------------------------------------------------------------

    def create_group(self, name: str) -> Status:
        if isinstance(name, str) and name in self.groups:
            return Status(Code.ALREADY_EXISTS, f"Group {name} already exists")
        status = check_group_name(name)
        if not status:
            return status
        self.groups[name] = Group(name, ownership=name not in self.last_writer_wins)
        return OK

    def release_group(self, name: str) -> Status:
        group = self.groups.get(name)
        if group is None:
            return Status(Code.DOES_NOT_EXIST, f"Group {name} does not exist")
        for member in list(group.members):
            self.remove_from_group(member)
        del self.groups[name]
        return OK

    def add_to_group(self, name: str, group_name: str, *, upstream: bool = False) -> Status:
        interface = self.interfaces.get(name)
        if interface is None:
            return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound")
        group = self.groups.get(group_name)
        if group is None:
            return Status(Code.DOES_NOT_EXIST, f"Group {group_name} does not exist")
        if interface.group is not None:
            return Status(
                Code.ALREADY_EXISTS, f"Interface {name} is already in group {interface.group}"
            )
        group.members.append(name)
        interface.group = group_name
        self._clear(interface, DisableReason.GROUPLESS)
        if upstream:
            group.upstream = name
        return OK

    def remove_from_group(self, name: str) -> Status:
        interface = self.interfaces.get(name)
        if interface is None:
            return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound")
        if interface.group is None:
            return Status(Code.NO_OPERATION, f"Interface {name} is in no group")
        group = self.groups[interface.group]
        group.members.remove(name)
        if group.upstream == name:
            group.upstream = None
        interface.group = None
        interface.loop_disabled_until = None
        interface.disable_reasons.discard(DisableReason.LOOP_DETECTED)
        interface.disable_reasons.add(DisableReason.GROUPLESS)
        interface._sync()
        return OK

    def set_upstream(self, name: str) -> Status:
        interface = self.interfaces.get(name)
        if interface is None:
            return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound")
        if interface.group is None:
            return Status(Code.DOES_NOT_EXIST, f"Interface {name} is in no group")
        self.groups[interface.group].upstream = name
        return OK

    def unset_upstream(self, group_name: str) -> Status:
        group = self.groups.get(group_name)
        if group is None:
            return Status(Code.DOES_NOT_EXIST, f"Group {group_name} does not exist")
        group.upstream = None
        return OK

    # --- member patterns ---------------------------------------------------------

    def add_pattern(self, pattern: str, group_name: str) -> Status:
        status = check_member_pattern(pattern)
        if not status:
            return status
        group = self.groups.get(group_name)
        if group is None:
            return Status(Code.DOES_NOT_EXIST, f"Group {group_name} does not exist")
        owner = self.pattern_owner(pattern)
        if owner is not None:
            return Status(Code.ALREADY_EXISTS, f"Pattern {pattern} is already in group {owner}")
        group.patterns.append(pattern)
        return OK

    def remove_pattern(self, pattern: str) -> Status:
        """Forget a pattern; the interfaces it bound are the caller's to release."""
        owner = self.pattern_owner(pattern)
        if owner is None:
            return Status(Code.DOES_NOT_EXIST, f"Pattern {pattern} is in no group")
        self.groups[owner].patterns.remove(pattern)
        return OK

    def pattern_owner(self, pattern: str) -> str | None:
        for group in self.groups.values():
            if pattern in group.patterns:
                return group.name
        return None

    def matching_patterns(self, name: str) -> list[tuple[str, str]]:
        """(group, pattern) of every pattern `name` matches, the winner (first group) first."""
        return [
            (group.name, pattern)
            for group in self.groups.values()
            for pattern in group.patterns
            if fnmatch.fnmatchcase(name, pattern)
        ]

    # --- disable reasons ---------------------------------------------------------

    def _clear(self, interface: Interface, reason: DisableReason) -> None:
        interface.disable_reasons.discard(reason)
        interface._sync()

    def set_reason(self, name: str, reason: DisableReason, present: bool) -> Status:
        interface = self.interfaces.get(name)
        if interface is None:
            return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound")
        if present:
            interface.disable_reasons.add(reason)
        else:
            interface.disable_reasons.discard(reason)
            if reason == DisableReason.LOOP_DETECTED:
                interface.loop_disabled_until = None
        interface._sync()
        return OK

    def enable(self, name: str) -> Status:
        """Clear the soft reasons (the operator's override); hard ones stay."""
        interface = self.interfaces.get(name)
        if interface is None:
            return Status(Code.DOES_NOT_EXIST, f"Interface {name} is not bound")
        soft = interface.disable_reasons & SOFT_REASONS
        if not soft:
            return Status(Code.NO_OPERATION, f"Interface {name} has no soft disable reason")
        interface.disable_reasons -= SOFT_REASONS
        interface.loop_disabled_until = None
        interface._sync()
        return OK

    def detect_loop(self, name: str, now: float) -> float:
        """Disable `name` for loop_disable_s from now (restarting any running disable)."""
        interface = self.interfaces[name]
        until = now + self.loop_disable_s
        interface.loop_disabled_until = until
        interface.disable_reasons.add(DisableReason.LOOP_DETECTED)
        interface._sync()
        return until

    def expire(self, now: float) -> list[str]:
        """End loop-disables and on-link prefixes that ran out; names re-allowed to forward."""
        released = []
        for interface in self.interfaces.values():
            until = interface.loop_disabled_until
            if until is not None and until <= now:
                interface.loop_disabled_until = None
                self._clear(interface, DisableReason.LOOP_DETECTED)
                released.append(interface.name)
        for group in self.groups.values():
            stale = [key for key, until in group.onlink_prefixes.items() if until <= now]
            for key in stale:
                del group.onlink_prefixes[key]
        return released

    def next_deadline(self) -> float | None:
        deadlines: list[float] = [
            i.loop_disabled_until for i in self.interfaces.values() if i.loop_disabled_until
        ]
        for group in self.groups.values():
            deadlines.extend(group.onlink_prefixes.values())
        return min(deadlines, default=None)

    # --- queries -----------------------------------------------------------------

    def group_of(self, name: str) -> Group | None:
        interface = self.interfaces.get(name)
        if interface is None or interface.group is None:
            return None
        return self.groups[interface.group]

    def forwarding_members(self, group_name: str) -> Iterable[Interface]:
        for name in self.groups[group_name].members:
            interface = self.interfaces[name]
            if interface.enabled:
                yield interface

    def is_upstream(self, name: str) -> bool:
        group = self.group_of(name)
        return group is not None and group.upstream == name
