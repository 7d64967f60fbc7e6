"""Engine time attribution: each step's wall time split among the requests that took part."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from inference.engine.accounting import EngineAccounting
from inference.engine.base import EngineRequest, SamplingParams


def test_a_step_is_split_equally_and_a_prefill_goes_to_its_request() -> None:
    ticks = iter([0.0, 0.010, 1.0, 1.030])  # a 10 ms prefill, then a 30 ms decode of three rows
    accounting = EngineAccounting(clock=lambda: next(ticks))
    accounting.charge_since(accounting.begin(), ["a"])
    accounting.charge_since(accounting.begin(), ["a", "b", "c"])
    assert accounting.ms("a") == pytest.approx(20.0)
    assert accounting.ms("b") == accounting.ms("c") == pytest.approx(10.0)
    assert accounting.total_ms == pytest.approx(40.0)
    assert accounting.forget("a") == pytest.approx(20.0)
    assert accounting.ms("a") == 0.0
    assert accounting.open_requests() == 2


def test_a_step_with_no_request_charges_nothing() -> None:
    accounting = EngineAccounting(clock=iter([0.0, 5.0]).__next__)
    accounting.charge_since(accounting.begin(), [])
    assert accounting.total_ms == 0.0 and accounting.open_requests() == 0


async def _collect(engine: Any, rid: str, prompt: str) -> float:
    request = EngineRequest(rid, engine.encode(prompt), SamplingParams(max_tokens=24, temperature=0))
    last = None
    async for out in engine.generate(request):
        assert out.engine_ms >= (last.engine_ms if last else 0.0)  # the running total only grows
        last = out
    assert last is not None and last.finished and last.finish_reason == "length"
    return last.engine_ms


async def test_two_batched_requests_split_each_decode_step(engine: Any) -> None:
    steps: list[tuple[float, tuple[str, ...]]] = []

    def listen(ms: float, ids: Sequence[str]) -> None:
        steps.append((ms, tuple(ids)))

    engine.accounting.listener = listen
    totals = await asyncio.gather(_collect(engine, "a", "Hello there"), _collect(engine, "b", "Hello again"))
    engine.accounting.listener = None

    shared = [ms for ms, ids in steps if set(ids) == {"a", "b"}]
    assert shared, "the two requests never shared a decode step"
    # Each request's total is its prefill plus its share of every step it took part in.
    for rid, total in zip(("a", "b"), totals, strict=True):
        expected = sum(ms / len(ids) for ms, ids in steps if rid in ids)
        assert total == pytest.approx(expected)
    # The split sums to the measured step total: no time is lost or counted twice.
    assert sum(totals) == pytest.approx(sum(ms for ms, _ in steps))
    prefills = {ids[0]: ms for ms, ids in steps if len(ids) == 1 and ids[0] in {"a", "b"}}
    assert set(prefills) == {"a", "b"}
    assert engine.accounting.open_requests() == 0  # finished requests leave nothing behind
