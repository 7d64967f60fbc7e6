"""Month-to-date usage from the ledger for the in-process quota backend.

With Redis, billing's spend feed (run wherever ingestion runs: the Celery worker, a command)
writes the ledger's month-to-date tokens and spend into the shared counters. Without Redis the
counters live inside each serving process, which the feed cannot reach, so the spend cap would
never bind. Here the serving process reads the ledger itself: on a tenant's first request it
waits for the figures (one query), afterwards it refreshes them in the background at most every
`GATEWAY_LEDGER_BASELINE_S`, the same lag the feed has.

Billing registers the source (`baseline_source_register`), so the gateway imports nothing of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from django.db import close_old_connections

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Baseline:
    tenant_id: int
    key_id: int | None  # None: the whole tenant
    tokens: int
    spend: Decimal


BaselineSource = Callable[[Iterable[int]], Iterable[Baseline]]
_source: BaselineSource | None = None


def baseline_source_register(source: BaselineSource | None) -> None:
    """Billing's month-to-date figures for some tenants (None unregisters)."""
    global _source
    _source = source


class _Sink(Protocol):
    def baseline_set(
        self, subject_name: str, period: str, tokens: int, spend: Decimal, *, tenant_id: int | None = None
    ) -> None: ...


class LedgerBaselines:
    def __init__(self, sink: _Sink, *, interval_s: float, period: Callable[[], str]) -> None:
        self._sink = sink
        self._interval_s = interval_s
        self._period = period
        self._fetched: dict[int, float] = {}  # tenant id -> monotonic time of the last fetch
        self._first: dict[int, asyncio.Future[None]] = {}  # a tenant's first read, while it runs
        self._tasks: set[asyncio.Future[Any]] = set()

    async def ensure(self, tenant_id: int | None) -> None:
        source = _source
        if source is None or tenant_id is None:
            return
        first = self._first.get(tenant_id)
        if first is not None and not first.done():
            await asyncio.shield(first)  # a burst on a cold process waits for the one first read
            return
        now = time.monotonic()
        last = self._fetched.get(tenant_id)
        if last is not None and now - last < self._interval_s:
            return
        self._fetched[tenant_id] = now
        fetch = asyncio.get_running_loop().run_in_executor(None, self._fetch, source, tenant_id)
        if last is None:
            self._first[tenant_id] = fetch
            try:
                await asyncio.shield(fetch)  # first sight: admit only with what the ledger holds
            finally:
                if fetch.done():
                    self._first.pop(tenant_id, None)
        else:
            self._tasks.add(fetch)
            fetch.add_done_callback(self._tasks.discard)

    def _fetch(self, source: BaselineSource, tenant_id: int) -> None:
        period = self._period()
        try:
            for row in source([tenant_id]):
                name = f"tenant:{row.tenant_id}" if row.key_id is None else f"key:{row.key_id}"
                self._sink.baseline_set(name, period, row.tokens, row.spend, tenant_id=row.tenant_id)
        except Exception:  # a hint for the caps, never a reason to refuse or fail a request
            # Tried again after the interval, not on every request of an outage.
            logger.warning("gateway: reading month-to-date usage for tenant %s failed", tenant_id, exc_info=True)
        finally:
            close_old_connections()
