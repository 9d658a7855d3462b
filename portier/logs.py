"""Logging for the daemons: journald-friendly lines and a rate limit for the packet path.

Under systemd (JOURNAL_STREAM is set) each line starts with its syslog priority, `<3>`,
which journald turns into the entry's priority, and carries no timestamp of its own.
Elsewhere lines get a timestamp.  Either way the message is followed by key=value
fields, so a line reads well and greps well.  Nothing on the packet path logs per
packet: `RateLimiter` lets a few lines per key through each interval and counts the rest.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class KeyValueFormatter(logging.Formatter):
    def __init__(self, program: str, journald: bool) -> None:
        super().__init__()
        self.program = program
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = getattr(record, "fields", None)
        if fields:
            message += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{message}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {self.program} {record.levelname.lower()} {message}"


def configure(program: str, level: str = "info") -> None:
    """Log to stderr as `program`; a second call (a worker forked from the zygote) only
    renames and changes what differs.

    setLevel clears the cache of every logger the process knows, a write to each of them,
    which in a forked worker copies every page that holds one (~0.4 MiB measured).
    """
    root = logging.getLogger()
    formatter = KeyValueFormatter(program, journald="JOURNAL_STREAM" in os.environ)
    ours = [h for h in root.handlers if isinstance(h.formatter, KeyValueFormatter)]
    if len(ours) == 1 and len(root.handlers) == 1:
        ours[0].setFormatter(formatter)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.handlers[:] = [handler]
    wanted = logging.getLevelNamesMapping()[level.upper()]
    if root.level != wanted:
        root.setLevel(wanted)
    # pyroute2 logs every netlink message it parses at debug: thousands of long lines
    # when hundreds of links appear, and the formatting is most of the supervisor's time.
    quiet = logging.getLogger("pyroute2")
    if quiet.level != logging.WARNING:
        quiet.setLevel(logging.WARNING)


class RateLimiter:
    """At most `burst` lines per key in any `interval_s`; says how many it held back."""

    def __init__(self, burst: int = 5, interval_s: float = 60.0) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, sent, held)

    def allow(self, key: str, now: float | None = None) -> tuple[bool, int]:
        """(log this one?, how many were suppressed since the last line for this key)."""
        now = time.monotonic() if now is None else now
        start, sent, held = self._windows.get(key, (now, 0, 0))
        if now - start >= self.interval_s:
            start, sent = now, 0
        if sent < self.burst:
            self._windows[key] = (start, sent + 1, 0)
            return True, held
        self._windows[key] = (start, sent, held + 1)
        return False, 0
