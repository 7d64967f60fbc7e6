"""Attribution through both planes: the `user` / `safety_identifier` and `metadata` of chat and
completions requests reach the ledger, and the usage API groups and filters by them (embeddings:
test_embeddings)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import openai
import pytest

from gateway import services as gw
from gateway.models import NodeState
from tenants.permissions import Role
from tests import factories
from tests.e2e.support import ControlPlane
from tests.support.inference_node import DEFAULT_SECRET, InferenceNode

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ACTOR = factories.SYSTEM


def test_chat_and_completions_attribution_reaches_the_ledger_and_the_usage_api(
    server: ControlPlane, node: InferenceNode, settings: Any
) -> None:
    from billing.models import UsageRecord
    from billing.services.ingestion import usage_ingest_node

    tenant, users = factories.tenant_with_members(f"attr-{uuid.uuid4().hex[:8]}")
    priced = factories.plan_with_price()
    factories.subscribe_directly(tenant, priced.plan)
    _, raw = factories.inference_key(tenant)
    model = gw.model_create(name="demo-llama", actor=ACTOR)
    version = gw.model_version_create(model=model, version="v1", status="active", actor=ACTOR)
    gw.model_grant_create(tenant=tenant, model=model, actor=ACTOR)
    registered = gw.node_register(
        name="node-a", base_url=node.base_url, versions=[version], state=NodeState.UP, actor=ACTOR
    )
    time.sleep(0.4)
    client = openai.OpenAI(api_key=raw, base_url=server.api_base, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hi"}]
    for user in ("carol", "carol", "dave"):
        client.chat.completions.create(model="demo-llama", messages=messages, max_tokens=2, user=user)  # type: ignore[arg-type]
    # safety_identifier wins over user; metadata tags the request.
    client.chat.completions.create(
        model="demo-llama", messages=messages, max_tokens=2, user="ignored",  # type: ignore[arg-type]
        safety_identifier="hashed-erin", metadata={"team": "search"},
    )  # fmt: skip
    client.completions.create(
        model="demo-llama", prompt="hi", max_tokens=2, user="carol", extra_body={"metadata": {"team": "ads"}}
    )

    settings.INFERENCE_SHARED_SECRET = DEFAULT_SECRET
    usage_ingest_node(registered)
    rows = UsageRecord.objects.filter(tenant=tenant)
    assert sorted(rows.values_list("end_user", flat=True)) == ["carol", "carol", "carol", "dave", "hashed-erin"]
    assert rows.get(end_user="hashed-erin").metadata == {"team": "search"}
    viewer = factories.session_client(users[Role.VIEWER])
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))  # from yesterday: midnight-proof
    body = viewer.get(f"/api/v1/tenants/{tenant.slug}/usage?start={day}&group_by=user").json()
    per_user = {}
    for bucket in body["data"]:
        for result in bucket["results"]:
            per_user[result["user"]] = per_user.get(result["user"], 0) + result["num_model_requests"]
    assert per_user == {"carol": 3, "dave": 1, "hashed-erin": 1}
    tagged = viewer.get(f"/api/v1/tenants/{tenant.slug}/usage?start={day}&metadata.team=search&group_by=user").json()
    assert [r["user"] for b in tagged["data"] for r in b["results"]] == ["hashed-erin"]
