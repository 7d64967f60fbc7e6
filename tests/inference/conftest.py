"""Fixtures for the inference plane: the demo model, an in-process engine, signing helpers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.inference_node import demo_model_path
from wire.context import SignedContext
from wire.signing import sign_headers


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return demo_model_path()


@pytest.fixture
async def engine(demo_model: Path) -> AsyncIterator[object]:
    from inference.engine.torch_engine import TorchEngine

    eng = TorchEngine(model_path=demo_model, max_batch_size=8, max_tokens=256, threads=1)
    await eng.start()
    yield eng
    await eng.stop()


def signed(
    secret: str,
    path: str,
    body: bytes,
    *,
    method: str = "POST",
    tenant: int = 1,
    key: int | None = 1,
    request_id: str | None = None,
    **ctx: int | str,
) -> dict[str, str]:
    context = SignedContext(tenant=tenant, key=key, request_id=request_id or str(uuid.uuid4()), **ctx)  # type: ignore[arg-type]
    headers = sign_headers(secret, method, path, body, context)
    headers["content-type"] = "application/json"
    return headers
