"""Replays: a signed attempt is served once; the window is short and memory stays bounded."""

from __future__ import annotations

import time

import pytest

from inference.config import NodeConfig
from inference.replay import ReplayCache
from wire.context import SignedContext
from wire.signing import SignatureError, sign_headers, verify_signature


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_skew_window_defaults_to_15_seconds(demo_model: object) -> None:
    config = NodeConfig.model_validate({"shared_secrets": ["s"], "models": [{"name": "m", "path": str(demo_model)}]})
    assert config.signature_max_skew_s == 15
    body = b"{}"
    headers = sign_headers("s", "POST", "/v1/x", body, SignedContext(1, None, "a"), timestamp=int(time.time()) - 16)
    with pytest.raises(SignatureError, match="stale"):
        verify_signature(["s"], "POST", "/v1/x", body, headers, max_skew=config.signature_max_skew_s)


def test_a_replay_inside_the_window_is_refused_and_forgotten_after_it() -> None:
    clock = Clock()
    cache = ReplayCache(window_s=15, capacity=100, clock=clock)
    assert cache.first_use("a") is True
    clock.now += 10
    assert cache.first_use("a") is False
    clock.now += 25  # past twice the window: the signature itself has expired by now
    assert cache.first_use("b") is True
    assert len(cache) == 1


def test_memory_stays_bounded_under_a_flood_of_distinct_ids() -> None:
    clock = Clock()
    cache = ReplayCache(window_s=15, capacity=1000, clock=clock)
    for i in range(50_000):
        assert cache.first_use(f"id-{i}") is True
        clock.now += 0.0001
        assert len(cache) <= 1000
    # The most recent ones are still remembered.
    assert cache.first_use("id-49999") is False
    # And time alone empties it.
    clock.now += 31
    cache.first_use("late")
    assert len(cache) == 1
