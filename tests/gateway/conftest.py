"""Fixtures for the gateway tests: a fake node on loopback, both quota backends, a tenant
with a key and a model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings

from gateway import forward, quota
from gateway.registry import registry
from gateway.tokens import prompt_counter
from tenants import services as tenant_services
from tests.gateway.fakenode import FakeNode


@pytest.fixture(scope="session", autouse=True)
def _drop_thread_connections(end_stray_db_sessions: None) -> None:
    """Worker threads and server processes of this suite leave database sessions behind."""


@pytest.fixture(autouse=True)
def _gateway_settings(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ROOT_URLCONF = "tests.gateway.urls"
    settings.GATEWAY_MARK_KEYS_USED = False


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    tenant_services.key_cache_reset()
    registry.invalidate()
    registry.in_flight.clear()
    registry.breakers.reset()
    registry.tenant_throttle.reset()
    prompt_counter.reset()
    yield
    tenant_services.key_cache_reset()
    registry.invalidate()
    quota.backend_set(None)


@pytest.fixture(params=["memory", "redis"])
def quota_backend(request: pytest.FixtureRequest, redis_url: str) -> Iterator[quota.QuotaBackend]:
    """The same tests run over the in-process backend and the Redis one."""
    backend: quota.QuotaBackend = quota.MemoryQuota() if request.param == "memory" else quota.RedisQuota(redis_url)
    backend.reset()
    quota.backend_set(backend)
    yield backend
    backend.reset()


@pytest.fixture
async def fake_node() -> AsyncIterator[FakeNode]:
    node = await FakeNode(secret=django_settings.INFERENCE_SHARED_SECRET.split(",")[0]).start()
    yield node
    await forward.upstream_client_close()
    await node.stop()


@dataclass
class World:
    tenant: Any
    key: Any
    raw: str
    model: Any
    version: Any
    node: Any

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.raw}"}


def build_world(node_url: str, *, limits: dict[str, Any] | None = None, key_limits: dict[str, Any] | None = None,
                model_name: str = "demo-llama", allowed_models: tuple[str, ...] = ()) -> World:  # fmt: skip
    from gateway import services
    from gateway.models import Model, NodeState
    from tests import factories

    tenant = factories.tenant(**(limits or {}))
    key, raw = factories.inference_key(tenant, allowed_models=allowed_models, limits=key_limits)
    model = Model.objects.filter(name=model_name).first() or services.model_create(
        name=model_name, actor=factories.SYSTEM
    )
    version = model.versions.filter(version="v1").first() or services.model_version_create(
        model=model, version="v1", status="active", actor=factories.SYSTEM
    )
    services.model_grant_create(tenant=tenant, model=model, actor=factories.SYSTEM)
    node = services.node_register(
        name=f"node-{model_name}", base_url=node_url, versions=[version], state=NodeState.UP, actor=factories.SYSTEM
    )
    return World(tenant, key, raw, model, version, node)


@pytest.fixture
def world_factory() -> Any:
    return sync_to_async(build_world)
