"""A scripted engine and an in-process server, for tests that need to hold requests in place."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from inference.app import create_app
from inference.config import NodeConfig
from inference.engine.base import Engine, EngineOutput, EngineRequest
from inference.server import DrainingServer
from tests.support.inference_node import free_port


class GatedEngine(Engine):
    """Bytes are tokens; each request emits one token per `gate` release (or freely when open)."""

    def __init__(self, *, max_batch_size: int = 1, context_length: int = 256) -> None:
        self.max_batch_size = max_batch_size
        self.context_length = context_length
        self.gate = asyncio.Event()
        self.active: set[str] = set()
        self.aborted: list[str] = []
        self.started: list[str] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def healthy(self) -> bool:
        return True

    def running(self) -> int:
        return len(self.active)

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        return self.encode("".join(f"{m['role']}:{m['content']}\n" for m in messages))

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        self.active.add(request.request_id)
        self.started.append(request.request_id)
        try:
            for n in range(1, request.params.max_tokens + 1):
                await self.gate.wait()
                await asyncio.sleep(0)
                yield EngineOutput(text="x", token_ids=[120], completion_tokens=n)
            yield EngineOutput(
                text="", finished=True, finish_reason="length", completion_tokens=request.params.max_tokens
            )
        finally:
            self.active.discard(request.request_id)

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


class LocalNode:
    """create_app() with GatedEngines, served by uvicorn inside the test's event loop."""

    def __init__(self, config: NodeConfig, engine: GatedEngine) -> None:
        self.engine = engine
        self.app = create_app(config, engine_factory=lambda spec: engine)
        self.node = self.app.state.node
        uv = uvicorn.Config(self.app, host="127.0.0.1", port=config.port, lifespan="on", log_level="warning")
        self.server = DrainingServer(uv, self.node, config.drain_timeout_s)
        self.base_url = f"http://127.0.0.1:{config.port}"
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LocalNode:
        # Signals stay with the test runner; tests call handle_exit themselves.
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self.server.serve())
        for _ in range(500):
            if self.server.started:
                return self
            await asyncio.sleep(0.01)
        raise TimeoutError("local node did not start")

    async def __aexit__(self, *exc: object) -> None:
        self.engine.gate.set()
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)


def local_config(demo_model: Path, tmp_path: Path, secret: str, **overrides: Any) -> NodeConfig:
    data: dict[str, Any] = {
        "port": free_port(),
        "shared_secrets": [secret],
        "models": [{"name": "gated", "version": "v1", "path": str(demo_model), "options": {"max_batch_size": 1}}],
        "journal_path": str(tmp_path / "journal.sqlite3"),
        "queue_timeout_s": 30,
        "drain_timeout_s": 5,
    }
    data.update(overrides)
    return NodeConfig.model_validate(data)


class FailingEngine(GatedEngine):
    """Produces one token, then reports an engine failure."""

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        self.started.append(request.request_id)
        yield EngineOutput(text="x", token_ids=[120], completion_tokens=1)
        yield EngineOutput(text="", finished=True, finish_reason="error", completion_tokens=1, error="device lost")
