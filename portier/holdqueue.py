"""Frames waiting for a destination the proxy does not know yet (RFC 4389 §4.1).

Per destination (group, address) at most `per_destination` frames are kept (the oldest is
dropped first, as the Linux neighbor queue does) and at most `max_destinations`
destinations are pending at once.  A pending destination is solicited `max_solicits`
times, `solicit_interval_s` apart; after that its frames time out.  Time is a parameter.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

DEFAULT_MAX_DESTINATIONS = 256
DEFAULT_PER_DESTINATION = 8
DEFAULT_SOLICIT_INTERVAL_S = 1.0
DEFAULT_MAX_SOLICITS = 3


@dataclass(slots=True, frozen=True)
class HeldFrame:
    ingress: str
    frame: bytes
    icmp_offset: int  # where the ND message starts, or -1 for a data frame
    meta: object = None  # the caller's opaque per-frame data, handed back on release


@dataclass(slots=True)
class PendingDestination:
    group: str
    address: bytes
    source: bytes  # IPv6 source of the first held frame; our NS speaks for it
    ingress: str
    frames: deque[HeldFrame] = field(default_factory=deque)
    solicits_sent: int = 0
    next_action_at: float = 0.0


class HoldQueue:
    def __init__(
        self,
        *,
        max_destinations: int = DEFAULT_MAX_DESTINATIONS,
        per_destination: int = DEFAULT_PER_DESTINATION,
        solicit_interval_s: float = DEFAULT_SOLICIT_INTERVAL_S,
        max_solicits: int = DEFAULT_MAX_SOLICITS,
    ) -> None:
        self.max_destinations = max_destinations
        self.per_destination = per_destination
        self.solicit_interval_s = solicit_interval_s
        self.max_solicits = max_solicits
        self._pending: dict[tuple[str, bytes], PendingDestination] = {}

    def __len__(self) -> int:
        return sum(len(p.frames) for p in self._pending.values())

    @property
    def destinations(self) -> int:
        return len(self._pending)

    def hold(
        self, group: str, address: bytes, source: bytes, held: HeldFrame, now: float
    ) -> tuple[PendingDestination | None, HeldFrame | None]:
        """Queue a frame.  Returns (the destination if newly pending, a frame pushed out).

        When no destination slot is free the frame itself comes back as pushed out.
        """
        key = (group, address)
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self.max_destinations:
                return None, held
            pending = PendingDestination(group, address, source, held.ingress)
            pending.frames.append(held)
            pending.next_action_at = now
            self._pending[key] = pending
            return pending, None
        pushed_out = (
            pending.frames.popleft() if len(pending.frames) >= self.per_destination else None
        )
        pending.frames.append(held)
        return None, pushed_out

    def release(self, group: str, address: bytes) -> list[HeldFrame]:
        pending = self._pending.pop((group, address), None)
        return list(pending.frames) if pending else []

    def due(self, now: float) -> tuple[list[PendingDestination], list[PendingDestination]]:
        """Destinations to solicit now, and destinations whose frames have timed out."""
        solicit: list[PendingDestination] = []
        expired: list[PendingDestination] = []
        for key, pending in list(self._pending.items()):
            if pending.next_action_at > now:
                continue
            if pending.solicits_sent >= self.max_solicits:
                del self._pending[key]
                expired.append(pending)
                continue
            pending.solicits_sent += 1
            pending.next_action_at = now + self.solicit_interval_s
            solicit.append(pending)
        return solicit, expired

    def next_deadline(self) -> float | None:
        return min((p.next_action_at for p in self._pending.values()), default=None)
