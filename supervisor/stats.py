"""Totals the supervisor counts itself (learned, expired, loops, claims, announcements).

Plain counters, written by the worker reports and the timers, read at scrape time.
Nothing here is persisted; a restarted daemon counts from zero, as Prometheus expects.
"""

from __future__ import annotations

import dataclasses
from collections import Counter


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
