"""Admission over HTTP with an engine the test holds still: 429, 503, queue timeout, drain."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.inference.conftest import signed
from tests.inference.fakes import GatedEngine, LocalNode, local_config
from wire.client import usage_pull

SECRET = "admission-secret"
PATH = "/v1/completions"


async def send(session: aiohttp.ClientSession, base: str, *, max_tokens: int = 3, **ctx: Any) -> tuple[int, Any, Any]:
    body = json.dumps({"model": "gated", "prompt": "hi", "max_tokens": max_tokens}).encode()
    async with session.post(base + PATH, data=body, headers=signed(SECRET, PATH, body, **ctx)) as r:
        return r.status, r.headers.get("retry-after"), await r.json()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_tenant_caps_give_429_and_global_cap_503(demo_model: Path, tmp_path: Path) -> None:
    engine = GatedEngine(max_batch_size=1)
    config = local_config(demo_model, tmp_path, SECRET, global_queue_cap=2)
    async with LocalNode(config, engine) as local, aiohttp.ClientSession() as session:
        caps = {"tenant": 1, "max_inflight": 1, "max_queued": 1}
        first = asyncio.create_task(send(session, local.base_url, **caps))
        await wait_for(lambda: engine.running() == 1)
        second = asyncio.create_task(send(session, local.base_url, **caps))
        core = local.node.registry.resolve("gated", "").scheduler.core
        await wait_for(lambda: core.waiting_of("1") == 1)

        status, retry_after, body = await send(session, local.base_url, **caps)
        assert status == 429
        assert retry_after is not None and int(retry_after) >= 1
        assert (body["error"]["type"], body["error"]["code"]) == ("rate_limit_exceeded", "rate_limit_exceeded")

        # Another tenant may still queue (the node's queue has room for one more) ...
        third = asyncio.create_task(send(session, local.base_url, tenant=2))
        await wait_for(lambda: core.waiting == 2)
        # ... and then the node is full for everyone.
        status, retry_after, body = await send(session, local.base_url, tenant=3)
        assert status == 503 and retry_after is not None
        assert body["error"]["code"] == "overloaded"

        engine.gate.set()
        results = await asyncio.gather(first, second, third)
        assert [r[0] for r in results] == [200, 200, 200]
        local.node.journal.flush()
        page = await asyncio.to_thread(usage_pull, local.base_url, SECRET, after=0)
        # Refused requests never reached the engine and are not in the journal.
        assert sorted(r["tenant"] for r in page["records"]) == [1, 1, 2]


async def test_queue_timeout_is_503_and_not_journaled(demo_model: Path, tmp_path: Path) -> None:
    engine = GatedEngine(max_batch_size=1)
    config = local_config(demo_model, tmp_path, SECRET, queue_timeout_s=0.2)
    async with LocalNode(config, engine) as local, aiohttp.ClientSession() as session:
        holder = asyncio.create_task(send(session, local.base_url, tenant=1))
        await wait_for(lambda: engine.running() == 1)
        status, _, body = await send(session, local.base_url, tenant=2)
        assert (status, body["error"]["code"]) == (503, "queue_timeout")
        engine.gate.set()
        assert (await holder)[0] == 200
        local.node.journal.flush()
        assert [
            r["tenant"] for r in (await asyncio.to_thread(usage_pull, local.base_url, SECRET, after=0))["records"]
        ] == [1]


async def test_disconnect_while_queued_leaves_the_queue(demo_model: Path, tmp_path: Path) -> None:
    engine = GatedEngine(max_batch_size=1)
    config = local_config(demo_model, tmp_path, SECRET)
    async with LocalNode(config, engine) as local, aiohttp.ClientSession() as session:
        holder = asyncio.create_task(send(session, local.base_url, tenant=1))
        await wait_for(lambda: engine.running() == 1)
        core = local.node.registry.resolve("gated", "").scheduler.core
        waiter = asyncio.create_task(send(session, local.base_url, tenant=2))
        await wait_for(lambda: core.waiting_of("2") == 1)
        waiter.cancel()  # closes the connection
        await asyncio.gather(waiter, return_exceptions=True)
        await wait_for(lambda: core.waiting_of("2") == 0)
        engine.gate.set()
        assert (await holder)[0] == 200
        assert len(engine.started) == 1  # b never reached the engine
        local.node.journal.flush()
        assert [
            r["tenant"] for r in (await asyncio.to_thread(usage_pull, local.base_url, SECRET, after=0))["records"]
        ] == [1]


async def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(demo_model: Path, tmp_path: Path) -> None:
    engine = GatedEngine(max_batch_size=2)
    config = local_config(demo_model, tmp_path, SECRET, drain_timeout_s=10)
    async with LocalNode(config, engine) as local, aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(send(session, local.base_url, tenant=1, max_tokens=5))
        await wait_for(lambda: engine.running() == 1)
        local.server.handle_exit(signal.SIGTERM, None)
        await wait_for(lambda: local.node.state.draining)
        async with session.get(local.base_url + "/ready") as r:
            assert r.status == 503 and (await r.json())["status"] == "draining"
        status, _, body = await send(session, local.base_url, tenant=2)
        assert (status, body["error"]["code"]) == (503, "draining")
        assert not local.server.should_exit  # still waiting for the in-flight request
        engine.gate.set()
        status, _, body = await in_flight
        assert status == 200 and body["usage"]["completion_tokens"] == 5
        await wait_for(lambda: local.server.should_exit)
    records = usage_pull_offline(tmp_path / "journal.sqlite3")
    assert [(r["tenant"], r["outcome"]) for r in records] == [(1, "length")]


def usage_pull_offline(path: Path) -> list[dict[str, Any]]:
    from inference.journal import Journal

    return [r.model_dump() for r in Journal(path).read_page(after=0, limit=100).records]


async def test_engine_failure_is_a_500_in_the_error_format_and_journaled(demo_model: Path, tmp_path: Path) -> None:
    from tests.inference.fakes import FailingEngine

    engine = FailingEngine(max_batch_size=2)
    engine.gate.set()
    config = local_config(demo_model, tmp_path, SECRET)
    async with LocalNode(config, engine) as local, aiohttp.ClientSession() as session:
        status, _, body = await send(session, local.base_url, tenant=1)
        assert status == 500
        assert (body["error"]["type"], body["error"]["code"]) == ("server_error", "engine_error")
        payload = json.dumps({"model": "gated", "prompt": "hi", "max_tokens": 3, "stream": True}).encode()
        async with session.post(
            local.base_url + PATH, data=payload, headers=signed(SECRET, PATH, payload, tenant=2)
        ) as r:
            events = (await r.read()).decode().strip().split("\n\n")
        assert json.loads(events[-2][len("data: ") :])["error"]["code"] == "engine_error"
        assert events[-1] == "data: [DONE]"
        local.node.journal.flush()
        page = await asyncio.to_thread(usage_pull, local.base_url, SECRET, after=0)
        assert [(r["tenant"], r["outcome"]) for r in page["records"]] == [(1, "error"), (2, "error")]
        # The non-streaming client got nothing: that attempt costs nothing. The stream had its token.
        tokens = [(r["prompt_tokens"], r["completion_tokens"]) for r in page["records"]]
        assert tokens[0] == (0, 0) and tokens[1][1] == 1 and tokens[1][0] > 0
        # The slots were given back.
        assert local.node.registry.resolve("gated", "").scheduler.core.running == 0
