"""Engine time per request: each step's wall time split among the sequences that took part.

A prefill step is charged to its one request; a decode step is divided equally among the rows of
the batch, so batched requests share what they shared. The per-request totals (milliseconds) ride
on every engine output and end in the journal as `engine_ms`, which billing prices per node-hour.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

StepListener = Callable[[float, Sequence[str]], None]


class EngineAccounting:
    """Accumulates per-request engine milliseconds; used from the engine thread only."""

    __slots__ = ("_clock", "_ms", "listener", "total_ms")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._ms: dict[str, float] = {}
        self.total_ms = 0.0  # every step charged so far, for checks and benchmarks
        # Called with (step ms, request ids) after each step; lets benchmarks and tests see the split.
        self.listener: StepListener | None = None

    def begin(self) -> float:
        """The clock at the start of a step."""
        return self._clock()

    def charge_since(self, started: float, request_ids: Sequence[str]) -> None:
        """Charge the time since `started` (from `begin`) to `request_ids` in equal shares."""
        self.charge(request_ids, (self._clock() - started) * 1000.0)

    def charge(self, request_ids: Sequence[str], elapsed_ms: float) -> None:
        if not request_ids:
            return
        share = elapsed_ms / len(request_ids)
        for request_id in request_ids:
            self._ms[request_id] = self._ms.get(request_id, 0.0) + share
        self.total_ms += elapsed_ms
        if self.listener is not None:
            self.listener(elapsed_ms, tuple(request_ids))

    def ms(self, request_id: str) -> float:
        """Milliseconds charged to the request so far."""
        return self._ms.get(request_id, 0.0)

    def forget(self, request_id: str) -> float:
        """Drop a finished request's total (the engine calls it once the final output is out)."""
        return self._ms.pop(request_id, 0.0)

    def open_requests(self) -> int:
        return len(self._ms)
