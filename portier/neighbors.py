"""The neighbor cache: (group, IPv6 address) -> where that neighbor lives.

RFC 4389 learning fills it: the source of every valid ND message and proxied packet,
an NA's target, an RA's source as a router.  An entry is REACHABLE for `reachable_s`
after a solicited NA confirmed it and STALE otherwise; it expires `lifetime_s` after it
was last seen.  The cache is bounded: when full, the least recently seen entry is evicted
(entries are kept in last-seen order, so expiry looks at the front).

Each entry also names its owner: the member interface and the MAC behind it
(ownership.py holds the rules of who may claim what).  The cache counts what each member
owns per group, for the quota.  The eviction rule, when the cache is full: the least
recently seen entry of the member that owns the most entries goes, so a member can only
push out entries of a member holding at least as many as it does (and, once it is the
largest, only its own).  Time is always a parameter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum

DEFAULT_CAPACITY = 16384
DEFAULT_LIFETIME_S = 600.0
DEFAULT_REACHABLE_S = 30.0
DEFAULT_PER_MEMBER_LIMIT = 256
# Seeing a neighbor again within this many seconds does not reorder the cache.
_TOUCH_GRANULARITY_S = 1.0


class NeighborState(StrEnum):
    REACHABLE = "reachable"
    STALE = "stale"


class OwnerState(StrEnum):
    OWNED = "owned"  # the owner holds it; other claims start a check
    CHECKING = "checking"  # another member claimed it: the owner is being probed


@dataclass(slots=True)
class Neighbor:
    group: str
    address: bytes
    interface: str
    mac: bytes
    is_router: bool = False
    first_seen: float = 0.0
    last_seen: float = 0.0
    reachable_until: float = 0.0
    reported_at: float = 0.0
    # While another member's claim is checked: who claims it, and when the owner's time
    # to answer runs out (0: no check running).
    claimant: str = ""
    claimant_mac: bytes = b""
    check_until: float = 0.0

    def state(self, now: float) -> NeighborState:
        return NeighborState.REACHABLE if now < self.reachable_until else NeighborState.STALE

    def owner_state(self) -> OwnerState:
        return OwnerState.CHECKING if self.check_until else OwnerState.OWNED

    def owned_by(self, interface: str, mac: bytes) -> bool:
        return self.interface == interface and self.mac == mac

    def copy(self) -> Neighbor:
        return replace(self)


class NeighborCache:
    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        lifetime_s: float = DEFAULT_LIFETIME_S,
        reachable_s: float = DEFAULT_REACHABLE_S,
        per_member_limit: int = DEFAULT_PER_MEMBER_LIMIT,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.per_member_limit = per_member_limit
        self.lifetime_s = lifetime_s
        self.reachable_s = reachable_s
        # A known neighbor seen again is reported at least this often, so that replicas
        # elsewhere know it is alive (the engine answers NS for fresh neighbors only).
        self.report_interval_s = min(lifetime_s / 4, 60.0)
        self.evicted = 0
        self._entries: dict[tuple[str, bytes], Neighbor] = {}
        # group -> addresses of its routers, so that choosing one never scans the cache.
        self._routers: dict[str, set[bytes]] = {}
        # (group, member) -> how many entries that member owns there.
        self._owned: Counter[tuple[str, str]] = Counter()
        # Keys stored, changed or removed since the journal was last taken (None: no one
        # asked for one).  The BPF path programs only these (supervisor/bpfpath.py).
        self._journal: set[tuple[str, bytes]] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Neighbor]:
        return iter(list(self._entries.values()))

    def keep_journal(self, keep: bool = True) -> None:
        """Start (or stop) recording which keys change (take_journal hands them over)."""
        self._journal = set() if keep else None

    def take_journal(self) -> set[tuple[str, bytes]] | None:
        """The keys changed since the last call, or None when no journal is kept."""
        journal = self._journal
        if journal is not None:
            self._journal = set()
        return journal

    def touched(self, entry: Neighbor) -> None:
        """`entry` was changed in place by its caller (an owner check's fields)."""
        if self._journal is not None:
            self._journal.add((entry.group, entry.address))

    def get(self, group: str, address: bytes) -> Neighbor | None:
        return self._entries.get((group, address))

    def owned_count(self, group: str, interface: str) -> int:
        return self._owned[(group, interface)]

    def owned_counts(self) -> dict[tuple[str, str], int]:
        return dict(self._owned)

    def at_quota(self, group: str, interface: str) -> bool:
        return self._owned[(group, interface)] >= self.per_member_limit

    def learn(
        self,
        group: str,
        address: bytes,
        interface: str,
        mac: bytes,
        now: float,
        *,
        confirmed: bool = False,
        is_router: bool | None = None,
    ) -> Neighbor | None:
        """Learn or refresh; returns the entry when it is new, changed or due a report."""
        key = (group, address)
        entry = self._entries.get(key)
        if entry is None:
            entry = Neighbor(group, address, interface, mac, bool(is_router), now, now, 0.0, now)
            if confirmed:
                entry.reachable_until = now + self.reachable_s
            self._insert(key, entry)
            return entry
        changed = entry.interface != interface or entry.mac != mac
        if changed:
            self._count(group, entry.interface, -1)
            self._count(group, interface, 1)
            entry.interface = interface
            entry.mac = mac
            entry.reachable_until = 0.0
        if is_router is not None and is_router != entry.is_router:
            entry.is_router = is_router
            self._index_router(entry)
            changed = True
        if confirmed:
            changed = changed or now >= entry.reachable_until
            entry.reachable_until = now + self.reachable_s
        if now - entry.last_seen >= _TOUCH_GRANULARITY_S or changed:
            entry.last_seen = now
            del self._entries[key]
            self._entries[key] = entry
            self.touched(entry)
        if changed or now - entry.reported_at >= self.report_interval_s:
            entry.reported_at = now
            return entry
        return None

    def put(self, neighbor: Neighbor) -> None:
        """Store an entry as given (a replica applying the supervisor's state)."""
        key = (neighbor.group, neighbor.address)
        self._delete(key)
        self._insert(key, neighbor)

    def _insert(self, key: tuple[str, bytes], entry: Neighbor) -> None:
        while len(self._entries) >= self.capacity:
            self._delete(self._eviction_victim())
            self.evicted += 1
        self._entries[key] = entry
        self._count(entry.group, entry.interface, 1)
        if entry.is_router:
            self._index_router(entry)
        self.touched(entry)

    def _count(self, group: str, interface: str, delta: int) -> None:
        owner = (group, interface)
        self._owned[owner] += delta
        if self._owned[owner] <= 0:
            del self._owned[owner]

    def _eviction_victim(self) -> tuple[str, bytes]:
        """The least recently seen entry of the member that owns the most entries."""
        (group, interface), _ = max(self._owned.items(), key=lambda item: item[1])
        for key, entry in self._entries.items():
            if entry.group == group and entry.interface == interface:
                return key
        return next(iter(self._entries))  # unreachable while the counts are right

    def _index_router(self, entry: Neighbor) -> None:
        routers = self._routers.setdefault(entry.group, set())
        if entry.is_router:
            routers.add(entry.address)
        else:
            routers.discard(entry.address)

    def _delete(self, key: tuple[str, bytes]) -> Neighbor | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.touched(entry)
        self._count(entry.group, entry.interface, -1)
        if entry.is_router:
            self._routers[entry.group].discard(entry.address)
        return entry

    def move(self, entry: Neighbor, interface: str, mac: bytes, now: float) -> None:
        """Give a stored entry to a new owner (a claim whose check failed)."""
        key = (entry.group, entry.address)
        self._delete(key)
        entry.interface = interface
        entry.mac = mac
        entry.reachable_until = 0.0
        entry.claimant = ""
        entry.claimant_mac = b""
        entry.check_until = 0.0
        entry.last_seen = entry.reported_at = now
        self._insert(key, entry)

    def remove(self, group: str, address: bytes) -> Neighbor | None:
        return self._delete((group, address))

    def flush(self, group: str | None = None) -> list[Neighbor]:
        """Forget every entry (of one group); returns what was forgotten."""
        doomed = [key for key in self._entries if group is None or key[0] == group]
        return [entry for key in doomed if (entry := self._delete(key)) is not None]

    def flush_interface(self, interface: str) -> list[Neighbor]:
        doomed = [key for key, entry in self._entries.items() if entry.interface == interface]
        return [entry for key in doomed if (entry := self._delete(key)) is not None]

    def expire(self, now: float) -> list[Neighbor]:
        """Remove entries not seen for lifetime_s; they are at the front."""
        expired = []
        horizon = now - self.lifetime_s
        while self._entries:
            key = next(iter(self._entries))
            entry = self._entries[key]
            if entry.last_seen > horizon:
                break
            self._delete(key)
            expired.append(entry)
        return expired

    def next_deadline(self) -> float | None:
        if not self._entries:
            return None
        return next(iter(self._entries.values())).last_seen + self.lifetime_s

    def best_router(self, group: str, interface: str, now: float) -> Neighbor | None:
        """The router to use on `interface`: REACHABLE before STALE, then most recent."""
        candidates = (self._entries[(group, address)] for address in self._routers.get(group, ()))
        return max(
            (entry for entry in candidates if entry.interface == interface),
            key=lambda entry: (now < entry.reachable_until, entry.last_seen),
            default=None,
        )
