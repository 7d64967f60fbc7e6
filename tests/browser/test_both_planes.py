"""A key made in the dashboard calls a real model: both planes as real processes, Chromium in front."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from openai import AuthenticationError, OpenAI
from playwright.sync_api import Page, expect

from gateway import services as gateway_services
from gateway.models import ModelVersion, NodeState
from tenants.permissions import Role
from tests.browser.test_dashboard import sign_in
from tests.e2e.support import ControlPlane, control_plane
from tests.frontend.conftest import SYSTEM, World
from tests.support.inference_node import DEFAULT_SECRET, InferenceNode, inference_node

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def node() -> Iterator[InferenceNode]:
    with inference_node(secret=DEFAULT_SECRET) as running:
        yield running


@pytest.fixture
def server(world: World, node: InferenceNode) -> Iterator[ControlPlane]:
    version = ModelVersion.objects.get(model__name="demo-llama", version="v1")
    gateway_services.node_register(
        name="node-a", base_url=node.base_url, versions=[version], state=NodeState.UP, actor=SYSTEM
    )
    env = {
        "INFERENCE_SHARED_SECRET": DEFAULT_SECRET,
        # The world's users have passwords hashed the fast way the tests use.
        "DJANGO_PASSWORD_HASHERS": "django.contrib.auth.hashers.MD5PasswordHasher",
        "AXES_ENABLED": "false",
        "GATEWAY_REGISTRY_REFRESH_S": "0.2",
    }
    with control_plane(workers=1, env=env) as cp:
        yield cp


def test_a_key_from_the_dashboard_calls_the_model_until_revoked(page: Page, server: ControlPlane, world: World) -> None:
    base = server.base_url
    sign_in(page, base, world.users[Role.DEVELOPER].email)
    page.goto(f"{base}/t/acme/keys/new/")
    page.get_by_label("Name").fill("e2e key")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#secret").input_value()
    client = OpenAI(base_url=server.api_base, api_key=secret, max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model="demo-llama", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    # The overview of the dashboard served by the same process reports the node up.
    page.get_by_role("button", name="Done").click()
    page.get_by_role("navigation", name="Tenant").get_by_role("link", name="Overview").click()
    expect(page.locator("#inference-status")).to_contain_text("1 of 1 node up")
    page.goto(f"{base}/t/acme/keys/")
    page.locator("tr", has_text="e2e key").get_by_role("button", name="Revoke key e2e key").click()
    expect(page.get_by_text("is revoked")).to_be_visible()
    deadline = time.monotonic() + 2
    refused = False
    while not refused and time.monotonic() < deadline:
        try:
            client.models.list()
        except AuthenticationError:
            refused = True
        else:
            time.sleep(0.1)
    assert refused, "the revoked key still works after 2 s"
    with pytest.raises(AuthenticationError):
        client.chat.completions.create(model="demo-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
