"""A burst of 2,000 keys no gateway process has seen, through the served control plane (uvicorn,
gateway.asgi): every one answered, and PostgreSQL never sees more backends than the pool allows."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import urllib.request
from typing import Any

import aiohttp
import psycopg
import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from tenants.models import APIKey, KeyKind
from tenants.selectors import token_digest
from tests import factories
from tests.e2e import support
from tests.e2e.support import control_plane

pytestmark = pytest.mark.django_db(transaction=True)

KEYS = 2000
POOL_MAX = 4


class BackendWatch(threading.Thread):
    """Counts the test database's backends that were not there when it started, every few ms."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._conn = psycopg.connect(url, autocommit=True)
        self._db = self._conn.info.dbname
        self._before = self._pids()
        self.peak = 0
        self.samples = 0
        self._done = threading.Event()

    def _pids(self) -> list[int]:
        rows = self._conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [self._db]).fetchall()
        return [row[0] for row in rows]

    def run(self) -> None:
        while not self._done.is_set():
            count = len(set(self._pids()) - set(self._before))
            self.peak = max(self.peak, count)
            self.samples += 1
            time.sleep(0.005)

    def stop(self) -> None:
        self._done.set()
        self.join(10)
        self._conn.close()


def _cold_keys(count: int) -> list[str]:
    tenant = factories.tenant(factories.unique("burst-"))
    raws = [f"sk-{secrets.token_urlsafe(32)}" for _ in range(count)]
    APIKey.objects.bulk_create(
        APIKey(
            tenant=tenant, kind=KeyKind.INFERENCE, name=f"burst {i}", prefix="sk-", digest=token_digest(raw),
            last4=raw[-4:], scopes=["inference"],
        )
        for i, raw in enumerate(raws)
    )  # fmt: skip
    return raws


async def _burst(base_url: str, raws: list[str]) -> list[int]:
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(raw: str) -> int:
            async with session.get(f"{base_url}/v1/models", headers={"authorization": f"Bearer {raw}"}) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one(raw) for raw in raws))


def _metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} is not on /metrics")


def test_a_burst_of_cold_keys_stays_within_the_pool() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the pool is PostgreSQL's")
    raws = _cold_keys(KEYS)
    env = {"DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_MAX_SIZE": str(POOL_MAX), "DATABASE_POOL_TIMEOUT_S": "60"}
    with control_plane(env=env) as cp:
        watch = BackendWatch(support.test_database_url())
        watch.start()
        try:
            statuses = asyncio.run(_burst(cp.base_url, raws))
        finally:
            watch.stop()

        with urllib.request.urlopen(cp.base_url + "/metrics", timeout=10) as response:
            metrics = response.read().decode()
        log = cp.log()
    assert statuses.count(200) == KEYS, (sorted(set(statuses)), log)
    assert watch.samples > 10, "the watch sampled during the burst"
    assert 1 <= watch.peak <= POOL_MAX, f"{watch.peak} backends for a pool of {POOL_MAX}"
    assert _metric(metrics, "mmorch_db_pool_max_connections") == POOL_MAX
    # One checkout per cold key (and a few for the routing snapshot and /metrics's own reads).
    assert KEYS <= _metric(metrics, "mmorch_db_pool_requests_total") <= KEYS + 50
    assert _metric(metrics, "mmorch_db_pool_timeouts_total") == 0


def test_without_the_pool_the_same_burst_opens_more(settings: Any) -> None:
    """The control: what the pool prevents (a backend per worker thread, and more under churn)."""
    if connection.vendor != "postgresql":
        pytest.skip("the pool is PostgreSQL's")
    raws = _cold_keys(400)
    with control_plane(env={"DATABASE_POOL": "false"}) as cp:
        watch = BackendWatch(support.test_database_url())
        watch.start()
        try:
            statuses = asyncio.run(_burst(cp.base_url, raws))
        finally:
            watch.stop()
    assert statuses.count(200) == len(raws)
    assert watch.peak > POOL_MAX
