"""Who may read a node's /metrics: with INFERENCE_METRICS_TOKEN, the bearer of it; without one,
nobody (404, as for an unknown path) unless INFERENCE_METRICS_PUBLIC=true."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.config import load_config
from tests.inference.conftest import signed
from tests.support.inference_node import DEFAULT_SECRET, InferenceNode, inference_node

TOKEN = "node-metrics-token-0123456789"


def _get(node: InferenceNode, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    request = urllib.request.Request(node.base_url + "/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def guarded() -> Iterator[InferenceNode]:
    with inference_node(INFERENCE_METRICS_TOKEN=TOKEN, INFERENCE_METRICS_PUBLIC="false") as node:
        yield node


def test_the_right_token_reads_the_metrics(guarded: InferenceNode) -> None:
    status, headers, body = _get(guarded, f"Bearer {TOKEN}")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b"mmorch_inference_requests_total" in body


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN])
def test_a_missing_or_wrong_token_is_refused(guarded: InferenceNode, authorization: str | None) -> None:
    status, headers, body = _get(guarded, authorization)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body) == {
        "error": {
            "message": "a valid metrics bearer token is required",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_metrics_token",
        }
    }


def test_without_a_token_metrics_are_off_unless_made_public() -> None:
    with inference_node(INFERENCE_METRICS_PUBLIC="false") as node:
        status, _, body = _get(node, f"Bearer {TOKEN}")
        assert status == 404
        assert json.loads(body)["error"]["code"] == "not_found"
        assert _get(node)[0] == 404
    # The development choice (`make demo`, the test harness): open on loopback.
    with inference_node(INFERENCE_METRICS_PUBLIC="true") as node:
        status, _, body = _get(node)
        assert status == 200
        assert b"mmorch_inference_requests_total" in body


def test_the_settings_come_from_the_environment(tmp_path: Path) -> None:
    model = tmp_path
    (model / "config.json").write_text("{}")
    base = {"INFERENCE_SHARED_SECRET": "s", "INFERENCE_MODEL_PATH": str(model)}
    default = load_config(base)
    assert (default.metrics_token, default.metrics_public) == ("", False)
    assert TOKEN not in repr(load_config({**base, "INFERENCE_METRICS_TOKEN": TOKEN})), "kept out of logs"
    opened = load_config({**base, "INFERENCE_METRICS_PUBLIC": "true"})
    assert opened.metrics_public is True


def test_tenants_beyond_the_cap_fold_into_other() -> None:
    with inference_node(INFERENCE_METRICS_PUBLIC="true", INFERENCE_METRICS_MAX_TENANTS="2") as node:
        for tenant in (11, 12, 13, 14):
            body = json.dumps({"model": "demo-llama", "prompt": "hi", "max_tokens": 2}).encode()
            headers = signed(DEFAULT_SECRET, "/v1/completions", body, tenant=tenant)
            request = urllib.request.Request(node.base_url + "/v1/completions", data=body, headers=headers)
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 200
        status, _, raw = _get(node)
    assert status == 200
    text = raw.decode()
    counted = re.findall(r'mmorch_inference_requests_total\{[^}]*tenant="([^"]+)"[^}]*\} (\S+)', text)
    per_tenant = {tenant: float(value) for tenant, value in counted}
    # The first two tenants keep their label; the other two share `other`, with both requests.
    assert per_tenant == {"11": 1.0, "12": 1.0, "other": 2.0}
    assert 'tenant="13"' not in text and 'tenant="14"' not in text
    assert re.search(r'mmorch_inference_time_to_first_token_seconds_count\{[^}]*tenant="other"[^}]*\} 2\.0', text)
