"""Fair sharing of the proxy's own work: one token bucket per member.

Work the proxy does on a member's behalf (solicitations for frames it holds, owner
checks, early answers) costs a token from that member's bucket; an empty bucket means
the work is skipped and counted, so one guest's flood spends only its own tokens and
never another guest's.  Buckets fill at `rate_per_s` up to `burst`.  Time is a
parameter; the number of buckets is bounded by the members that exist.
"""

from __future__ import annotations

# Each member's share of the proxy's work, everywhere it is done: the engine, the
# worker's answer thread, and the kernel's NS responder (supervisor/bpf/portier_tc.c
# has the same two numbers).
MEMBER_WORK_PER_S = 50.0
MEMBER_WORK_BURST = 100


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: float, *, max_keys: int = 4096) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self.refused = 0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        tokens, since = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - since) * self.rate_per_s)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            self.refused += 1
            return False
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._buckets.clear()  # members come and go: forget the idle ones wholesale
        self._buckets[key] = (tokens - cost, now)
        return True
