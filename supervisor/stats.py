"""Totals the supervisor counts itself (learned, expired, loops, claims, announcements).

Plain counters, written by the worker reports and the timers, read at scrape time.
Nothing here is persisted; a restarted daemon counts from zero, as Prometheus expects.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection


@dataclasses.dataclass
class SupervisorStats:
    learned: Counter[str] = dataclasses.field(default_factory=Counter)  # by group
    expired: Counter[str] = dataclasses.field(default_factory=Counter)  # by group
    loops: Counter[str] = dataclasses.field(default_factory=Counter)  # by interface
    # Address claims settled, by (claimant interface, outcome); owner checks sent, by
    # the owner's interface.
    claims: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    probes: Counter[str] = dataclasses.field(default_factory=Counter)
    # Unsolicited NAs asked of the upstream, by (member the address is behind, outcome:
    # sent or rate_limited).
    announcements: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)

    def keep_interfaces(self, bound: Collection[str]) -> None:
        """Forget the counts of interfaces no longer bound: guests come and go under names
        never seen again, and each name's series would otherwise stay for good."""
        for by_name in (self.loops, self.probes):
            for name in [name for name in by_name if name not in bound]:
                del by_name[name]
        for by_pair in (self.claims, self.announcements):
            for key in [key for key in by_pair if key[0] not in bound]:
                del by_pair[key]
