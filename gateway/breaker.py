"""Per-node circuit breakers and per-tenant failure throttles (per process).

A node is taken out of rotation for a cooldown on a connection error or timeout, or after
`threshold` consecutive 5xx answers to distinct requests; one request's 5xx never does it, so a
few poison requests cannot empty a model's pool. After the cooldown the breaker is half-open: one
trial request goes through, and its outcome closes or reopens it.

A tenant whose requests keep failing at the nodes is throttled instead (429 for a short time).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class Breaker:
    state: State = "closed"
    streak: set[str] = field(default_factory=set)  # distinct requests failing in a row
    open_until: float = 0.0
    trial: bool = False  # a half-open trial is in flight


class Breakers:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._nodes: dict[int, Breaker] = {}

    def reset(self) -> None:
        self._nodes.clear()

    def state(self, node_id: int) -> State:
        breaker = self._nodes.get(node_id)
        if breaker is None:
            return "closed"
        if breaker.state == "open" and self._clock() >= breaker.open_until:
            breaker.state = "half_open"
            breaker.trial = False
        return breaker.state

    def usable(self, node_id: int) -> bool:
        """Closed, or half-open with no trial in flight yet."""
        state = self.state(node_id)
        return state == "closed" or (state == "half_open" and not self._nodes[node_id].trial)

    def attempt(self, node_id: int) -> None:
        """A request is sent to the node: in half-open it is the one trial."""
        if self.state(node_id) == "half_open":
            self._nodes[node_id].trial = True

    def success(self, node_id: int) -> None:
        if node_id in self._nodes:
            del self._nodes[node_id]

    def trip(self, node_id: int, cooldown_s: float) -> None:
        """Open now (connection error, timeout, or a failed trial)."""
        breaker = self._nodes.setdefault(node_id, Breaker())
        breaker.state = "open"
        breaker.open_until = self._clock() + cooldown_s
        breaker.streak.clear()
        breaker.trial = False

    def server_error(self, node_id: int, request_key: str, *, threshold: int, cooldown_s: float) -> bool:
        """A 5xx for the request `request_key`; opens after `threshold` distinct requests in a row.

        True when this opened the breaker."""
        breaker = self._nodes.setdefault(node_id, Breaker())
        state = self.state(node_id)
        if state == "open":
            return False
        if state == "half_open":
            self.trip(node_id, cooldown_s)
            return True
        breaker.streak.add(request_key)
        if len(breaker.streak) >= max(1, threshold):
            self.trip(node_id, cooldown_s)
            return True
        return False


class TenantThrottle:
    """After `limit` failed requests within `window_s`, a tenant is refused for `block_s`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[int, deque[float]] = {}
        self._blocked_until: dict[int, float] = {}

    def reset(self) -> None:
        self._failures.clear()
        self._blocked_until.clear()

    def blocked_for(self, tenant_id: int) -> float:
        """Seconds the tenant stays throttled (0 when it is not)."""
        until = self._blocked_until.get(tenant_id)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._blocked_until[tenant_id]
            return 0.0
        return left

    def failure(self, tenant_id: int, *, limit: int, window_s: float = 60.0, block_s: float) -> None:
        now = self._clock()
        times = self._failures.setdefault(tenant_id, deque())
        times.append(now)
        while times and times[0] <= now - window_s:
            times.popleft()
        if len(times) >= max(1, limit):
            self._blocked_until[tenant_id] = now + block_s
            times.clear()
