"""Live planes shared by the tests of this package: started once, stopped at the end.

The control plane's /metrics is taken after real work: the live inference node serves a completion,
usage ingestion pulls its journal and a billing run executes, so the scrape-time billing metrics have
samples. That work happens in a transaction rolled back afterwards: the test database stays clean for
the other suites.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction
from django.test import Client, override_settings

from tests.support.inference_node import InferenceNode, inference_node
from wire.context import SignedContext
from wire.signing import sign_headers

# Both planes' /metrics ask for it here, as they do in compose and on Kubernetes; Prometheus sends it.
METRICS_TOKEN = "platform-tests-metrics-token-0123456789"


def node_secret() -> str:
    """The node accepts what the control plane signs with (ingestion pulls its journal)."""
    return str(settings.INFERENCE_SHARED_SECRET).split(",")[0].strip()


@pytest.fixture(scope="package")
def live_node() -> Iterator[InferenceNode]:
    """A real node that has served one completion for tenant 7."""
    # A short drain keeps the teardown quick; draining itself is not under test here.
    with inference_node(
        secret=node_secret(),
        INFERENCE_DRAIN_TIMEOUT_S="0.5",
        INFERENCE_METRICS_TOKEN=METRICS_TOKEN,
        INFERENCE_METRICS_PUBLIC="false",
    ) as node:
        body = json.dumps({"model": "demo-llama", "prompt": "Hello", "max_tokens": 4}).encode()
        ctx = SignedContext(tenant=7, key=3, request_id="req_metrics_test", max_inflight=4, max_queued=4)
        headers = sign_headers(node_secret(), "POST", "/v1/completions", body, ctx)
        headers["content-type"] = "application/json"
        request = urllib.request.Request(node.base_url + "/v1/completions", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            assert json.loads(response.read())["usage"]["completion_tokens"] > 0
        yield node


@pytest.fixture(scope="package")
def inference_metrics(live_node: InferenceNode) -> str:
    request = urllib.request.Request(live_node.base_url + "/metrics", headers=_bearer())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def _bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture(scope="package")
def control_plane_metrics(live_node: InferenceNode, django_db_setup: Any, django_db_blocker: Any) -> str:
    from billing.services.ingestion import usage_ingest_all
    from billing.services.invoices import billing_run
    from core.audit import Actor
    from gateway.services import node_register

    client = Client()
    with django_db_blocker.unblock(), transaction.atomic(), override_settings(MMORCH_METRICS_TOKEN=METRICS_TOKEN):
        node_register(name="metrics-node", base_url=live_node.base_url, actor=Actor(label="platform-tests"))
        ingested = usage_ingest_all(feed=False)
        assert ingested.fetched >= 1, ingested
        billing_run(period="2000-01")
        assert client.get("/healthz").status_code == 200
        # No key: the gateway answers 401 before any quota or node work.
        assert client.get("/v1/models").status_code == 401
        assert client.get("/metrics").status_code == 401
        response = client.get("/metrics", headers=_bearer())
        transaction.set_rollback(True)
    assert response.status_code == 200
    return response.content.decode()
