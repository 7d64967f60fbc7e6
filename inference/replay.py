"""Signed attempts seen within the skew window: a replayed request is refused, not served twice.

A signature is valid for `window_s` seconds either side of its timestamp, so remembering each
attempt for twice that long covers every moment it could be replayed. Memory is bounded twice:
entries expire by time, and past `capacity` the oldest are forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class ReplayCache:
    def __init__(self, *, window_s: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = 2 * window_s
        self._capacity = max(1, capacity)
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # id → first seen, oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        seen = self._seen
        cutoff = now - self._ttl
        while seen:
            oldest, at = next(iter(seen.items()))
            if at > cutoff and len(seen) < self._capacity:
                return
            del seen[oldest]

    def first_use(self, attempt_id: str) -> bool:
        """Records `attempt_id`; False when it was already seen (a replay). O(1) amortised."""
        now = self._clock()
        self._expire(now)
        if attempt_id in self._seen:
            return False
        self._seen[attempt_id] = now
        return True
