"""Database work on /v1's hot path, counted through the gateway's own ASGI lane (gateway.asgi):
queries and pooled-connection checkouts in every thread, for a cold and a warm key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from django.db import connections
from django.db.backends.signals import connection_created

from core.dbpool import db_pool_stats
from gateway.asgi import gateway_application
from tenants import keyuse
from tenants import services as tenant_services
from tests.gateway.conftest import World
from tests.gateway.fakenode import FakeNode

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@dataclass
class DatabaseUse:
    """Queries and connection checkouts of every thread (each checkout from the pool opens the
    thread's connection object, which sends `connection_created`)."""

    checkouts: int = 0
    queries: list[str] = field(default_factory=list)

    def _count(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.queries.append(sql)
        return execute(sql, params, many, context)

    def opened(self, sender: Any, connection: Any, **_: Any) -> None:
        self.checkouts += 1
        if self._count not in connection.execute_wrappers:
            connection.execute_wrappers.append(self._count)

    def reset(self) -> None:
        self.checkouts = 0
        self.queries.clear()


@pytest.fixture
def database_use() -> Iterator[DatabaseUse]:
    use = DatabaseUse()
    connection_created.connect(use.opened)
    yield use
    connection_created.disconnect(use.opened)


async def asgi_post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request through gateway.asgi's lane, as uvicorn would send it."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in {**headers, "host": "testserver"}.items()],
        "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
    }  # fmt: skip
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    done = asyncio.Event()
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await gateway_application(scope, receive, send)
    done.set()
    return status, b"".join(chunks)


async def chat(world: World) -> None:
    status, body = await asgi_post(
        "/v1/chat/completions", orjson.dumps(CHAT), {**world.auth, "content-type": "application/json"}
    )
    assert status == 200, body


async def test_cold_key_costs_one_pooled_query_and_warm_key_none(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any, settings: Any, database_use: DatabaseUse
) -> None:
    settings.GATEWAY_REGISTRY_REFRESH_S = 3600.0  # no background refresh inside the counts
    settings.GATEWAY_LEDGER_BASELINE_S = 3600.0
    settings.GATEWAY_MARK_KEYS_USED = True
    world: World = await world_factory(fake_node.url)
    await chat(world)  # loads the routing snapshot and the tenant's ledger baseline once
    keyuse.key_use_reset()

    held_before = _held()
    tenant_services.key_cache_reset()
    database_use.reset()
    await chat(world)  # the key is not in this process's cache
    assert len(database_use.queries) == 1, database_use.queries
    assert "tenants_apikey" in database_use.queries[0]
    assert database_use.checkouts == 1
    assert keyuse.key_use_pending().keys() == {world.key.pk}, "the use is noted, not written"

    database_use.reset()
    for _ in range(5):
        await chat(world)
    assert database_use.queries == []
    assert database_use.checkouts == 0
    # The lookup's thread gave its connection back: no thread holds one between requests.
    assert _held() == held_before


def _held() -> int | None:
    """Connections taken from the pool and not returned (the test's own threads hold some)."""
    if connections["default"].vendor != "postgresql":
        return None
    stats = db_pool_stats()
    assert stats is not None and stats["pool_size"] <= stats["pool_max"]
    return stats["pool_size"] - stats["pool_available"]


async def test_unknown_keys_cost_one_query_each_then_none(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any, settings: Any, database_use: DatabaseUse
) -> None:
    settings.GATEWAY_REGISTRY_REFRESH_S = 3600.0
    world: World = await world_factory(fake_node.url)
    await chat(world)
    database_use.reset()
    bad = {"authorization": "Bearer sk-" + "x" * 40, "content-type": "application/json"}
    for expected_queries in (1, 1, 1):
        status, _ = await asgi_post("/v1/chat/completions", orjson.dumps(CHAT), bad)
        assert status == 401
        assert len(database_use.queries) == expected_queries
    assert database_use.checkouts == 1  # the refusal is cached: later tries cost nothing


async def test_a_registry_refresh_borrows_one_pooled_connection_and_returns_it(
    fake_node: FakeNode, world_factory: Any, database_use: DatabaseUse
) -> None:
    from gateway.registry import registry

    world: World = await world_factory(fake_node.url)
    await registry.snapshot()  # the first load
    held_before = _held()
    database_use.reset()
    for _ in range(3):
        await registry._refresh()
    assert database_use.checkouts == 3, "one connection per refresh, taken from the pool"
    assert len(database_use.queries) == 3 * 5  # nodes and their versions, active versions, models, grants
    assert _held() == held_before, "and given back"
    assert "demo-llama" in (await registry.snapshot()).tenant_models(world.tenant.id)
