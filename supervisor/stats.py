"""Totals the supervisor counts itself (learned, expired, loops), for the metrics.

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
