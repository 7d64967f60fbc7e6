"""Per-node circuit breakers and per-tenant throttles: poison requests cannot empty a pool."""

from __future__ import annotations

from gateway.breaker import Breakers, TenantThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_requests_5xx_never_opens_the_breaker() -> None:
    breakers = Breakers(Clock())
    for _ in range(10):  # the same request failing again and again counts once
        breakers.server_error(1, "req-a", threshold=3, cooldown_s=5)
    assert breakers.state(1) == "closed" and breakers.usable(1)


def test_consecutive_failures_across_distinct_requests_open_then_half_open_then_close() -> None:
    clock = Clock()
    breakers = Breakers(clock)
    breakers.server_error(1, "a", threshold=3, cooldown_s=5)
    breakers.server_error(1, "b", threshold=3, cooldown_s=5)
    breakers.success(1)  # a success in between resets the streak
    breakers.server_error(1, "c", threshold=3, cooldown_s=5)
    breakers.server_error(1, "d", threshold=3, cooldown_s=5)
    assert breakers.state(1) == "closed"
    breakers.server_error(1, "e", threshold=3, cooldown_s=5)
    assert breakers.state(1) == "open" and not breakers.usable(1)
    clock.now += 5
    assert breakers.state(1) == "half_open" and breakers.usable(1)
    breakers.attempt(1)  # the one trial request
    assert not breakers.usable(1)
    breakers.server_error(1, "f", threshold=3, cooldown_s=5)  # the trial failed: open again
    assert breakers.state(1) == "open"
    clock.now += 5
    breakers.attempt(1)
    breakers.success(1)
    assert breakers.state(1) == "closed" and breakers.usable(1)


def test_a_connection_error_opens_at_once() -> None:
    breakers = Breakers(Clock())
    breakers.trip(2, 5)
    assert breakers.state(2) == "open"


def test_a_tenant_failing_k_times_a_minute_is_throttled_for_a_while() -> None:
    clock = Clock()
    throttle = TenantThrottle(clock)
    for _ in range(4):
        throttle.failure(7, limit=5, block_s=30)
        clock.now += 1
    assert throttle.blocked_for(7) == 0
    clock.now += 60  # old failures fall out of the minute
    throttle.failure(7, limit=5, block_s=30)
    assert throttle.blocked_for(7) == 0
    for _ in range(4):
        throttle.failure(7, limit=5, block_s=30)
    assert throttle.blocked_for(7) == 30
    assert throttle.blocked_for(8) == 0
    clock.now += 31
    assert throttle.blocked_for(7) == 0
