"""PostgreSQL stopped under the control plane (on a cluster of the test's own): warm keys may still be
served, everything else is a clean 503, and the control plane reconnects when the database is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.e2e.support import control_plane
from tests.reliability.support import (
    OwnPostgres,
    Reply,
    assert_openai_error,
    chat,
    gateway_env,
    get,
    manage,
    own_postgres,
    python_script,
    rid_new,
)
from tests.support.inference_node import InferenceNode

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SEED = """
import json, os
from gateway import services as gw
from gateway.models import NodeState
from tests import factories

tenant = factories.tenant(requests_per_minute=100000, tokens_per_minute=100000000)
_, warm = factories.inference_key(tenant, name="warm")
_, cold = factories.inference_key(tenant, name="cold")
model = gw.model_create(name="demo-llama", actor=factories.SYSTEM)
version = gw.model_version_create(model=model, version="v1", status="active", actor=factories.SYSTEM)
gw.model_grant_create(tenant=tenant, model=model, actor=factories.SYSTEM)
gw.node_register(name="node-pg", base_url=os.environ["REL_NODE_URL"], versions=[version], state=NodeState.UP,
                 actor=factories.SYSTEM)
print(json.dumps({"warm": warm, "cold": cold}))
"""


def _readyz(base_url: str) -> tuple[int, dict[str, Any]]:
    status, _, body = get(base_url + "/readyz")
    return status, orjson.loads(body)


@dataclass
class Cluster:
    pg: OwnPostgres
    env: dict[str, str]
    warm: str  # a key each test warms in its control plane before the outage
    cold: str  # a key no control plane has seen before the outage


@pytest.fixture(scope="module")
def cluster(node: InferenceNode) -> Iterator[Cluster]:
    """A PostgreSQL cluster of the module's own, migrated and seeded in subprocesses."""
    with own_postgres() as pg:
        # In-process quotas and key cache: the database is the one thing that fails here.
        env = {"DATABASE_URL": pg.url, "REDIS_URL": ""}
        migrated = manage("migrate", "--no-input", env=env)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        keys = python_script(SEED, env={**env, "REL_NODE_URL": node.base_url})
        yield Cluster(pg, env, keys["warm"], keys["cold"])


def _warm_then_stop(cp_url: str, cluster: Cluster) -> None:
    for _ in range(3):
        warmed = chat(cp_url, cluster.warm, request_id=rid_new("warm"), max_tokens=2)
        assert warmed.status == 200, warmed.body
    assert _readyz(cp_url)[0] == 200
    cluster.pg.stop("immediate")


def test_postgres_down_serves_warm_keys_or_503_reports_not_ready_and_recovers_without_a_restart(
    node: InferenceNode, cluster: Cluster
) -> None:
    """Proves: with its database stopped (`pg_ctl stop -m immediate`), the control plane (one
    worker) serves a key it has seen from its cache (200) or refuses with a 503 OpenAI-shaped JSON
    error, never a 500; a key it has not seen is not served; `/readyz` answers 503 naming the
    database; once PostgreSQL is started again, that unseen key is served by the same process, with
    no restart. (What the unseen key gets during the outage is pinned by the next test.)"""
    with control_plane(workers=1, env=gateway_env(node, **cluster.env)) as cp:
        _warm_then_stop(cp.base_url, cluster)
        try:
            warm = [chat(cp.base_url, cluster.warm, request_id=rid_new("warm"), max_tokens=2) for _ in range(4)]
            cold = chat(cp.base_url, cluster.cold, request_id=rid_new("cold"), max_tokens=2)
            for reply in warm:
                assert reply.error is None, reply
                assert reply.status in (200, 503), (reply.status, reply.body[:500])
                if reply.status == 503:
                    assert_openai_error(reply, 503, "service_unavailable")
            assert cold.error is None and cold.status != 200, cold
            status, ready = _readyz(cp.base_url)
            assert status == 503 and ready["status"] == "not ready", ready
            assert ready["checks"]["database"] != "ok", ready
        finally:
            cluster.pg.start()

        deadline = time.monotonic() + 10
        recovered = chat(cp.base_url, cluster.cold, request_id=rid_new("cold"), max_tokens=2)
        while recovered.status != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
            recovered = chat(cp.base_url, cluster.cold, request_id=rid_new("cold"), max_tokens=2)
        assert recovered.status == 200, (recovered.status, recovered.body[:500], cp.log())
        assert _readyz(cp.base_url)[0] == 200
        assert cp.process.poll() is None  # the same process throughout


def test_postgres_down_answers_an_unseen_key_with_a_503_json_error_not_a_500(
    node: InferenceNode, cluster: Cluster
) -> None:
    """Proves: while PostgreSQL is down, a key the control plane cannot look up (not in its cache)
    gets a 503 OpenAI-shaped JSON error `service_unavailable` (retry later), not a 500, not a 401."""
    with control_plane(workers=1, env=gateway_env(node, **cluster.env)) as cp:
        _warm_then_stop(cp.base_url, cluster)
        try:
            cold: list[Reply] = [
                chat(cp.base_url, cluster.cold, request_id=rid_new("cold"), max_tokens=2) for _ in range(3)
            ]
        finally:
            cluster.pg.start()
    for reply in cold:
        assert reply.error is None, reply
        assert_openai_error(reply, 503, "service_unavailable")
