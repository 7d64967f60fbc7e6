"""Request signing: what the gateway sends and what the node accepts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from wire.context import (
    HEADER_CLIENT_REQUEST_ID,
    HEADER_KEY,
    HEADER_REQUEST_ID,
    HEADER_TENANT,
    HEADER_WEIGHT,
    SignedContext,
)
from wire.signing import HEADER_SIGNATURE, HEADER_TIMESTAMP, SignatureError, sign_headers, verify_signature

CTX = SignedContext(
    tenant=42,
    key=7,
    request_id="att-1",
    weight=3,
    max_inflight=4,
    max_queued=8,
    priority=2,
    model_version="v2",
    client_request_id="req-1",
)
BODY = b'{"model": "demo-llama", "prompt": "hi"}'


def test_round_trip_returns_the_signed_context() -> None:
    headers = sign_headers("s1", "POST", "/v1/completions", BODY, CTX)
    assert verify_signature(["s1"], "POST", "/v1/completions", BODY, headers) == CTX
    # Header names are case-insensitive on the wire.
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify_signature(["s1"], "post", "/v1/completions", BODY, upper) == CTX


def test_any_configured_secret_verifies_for_rotation() -> None:
    headers = sign_headers("new", "POST", "/v1/completions", BODY, CTX)
    assert verify_signature(["old", "new"], "POST", "/v1/completions", BODY, headers).tenant == 42
    with pytest.raises(SignatureError, match="wrong"):
        verify_signature(["old"], "POST", "/v1/completions", BODY, headers)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h: h.pop(HEADER_SIGNATURE), id="missing-signature"),
        pytest.param(lambda h: h.pop(HEADER_TIMESTAMP), id="missing-timestamp"),
        pytest.param(lambda h: h.update({HEADER_SIGNATURE: "v1=" + "0" * 64}), id="wrong-signature"),
        pytest.param(lambda h: h.update({HEADER_TENANT: "43"}), id="other-tenant"),
        pytest.param(lambda h: h.update({HEADER_WEIGHT: "100"}), id="raised-weight"),
        pytest.param(lambda h: h.update({HEADER_REQUEST_ID: "att-2"}), id="other-attempt"),
        pytest.param(lambda h: h.update({HEADER_CLIENT_REQUEST_ID: "req-2"}), id="other-client-id"),
        pytest.param(lambda h: h.update({HEADER_TIMESTAMP: "abc"}), id="malformed-timestamp"),
    ],
)
def test_tampered_headers_are_rejected(mutate: object) -> None:
    headers = sign_headers("s1", "POST", "/v1/completions", BODY, CTX)
    mutate(headers)  # type: ignore[operator]
    with pytest.raises(SignatureError):
        verify_signature(["s1"], "POST", "/v1/completions", BODY, headers)


def test_body_path_and_method_are_covered() -> None:
    headers = sign_headers("s1", "POST", "/v1/completions", BODY, CTX)
    with pytest.raises(SignatureError):
        verify_signature(["s1"], "POST", "/v1/completions", BODY + b" ", headers)
    with pytest.raises(SignatureError):
        verify_signature(["s1"], "POST", "/v1/chat/completions", BODY, headers)
    with pytest.raises(SignatureError):
        verify_signature(["s1"], "PUT", "/v1/completions", BODY, headers)


def test_query_string_is_covered() -> None:
    headers = sign_headers("s1", "GET", "/internal/usage?after=0&limit=10", b"", CTX)
    assert verify_signature(["s1"], "GET", "/internal/usage?after=0&limit=10", b"", headers)
    with pytest.raises(SignatureError):
        verify_signature(["s1"], "GET", "/internal/usage?after=5&limit=10", b"", headers)


def test_stale_and_future_timestamps_are_rejected() -> None:
    now = int(time.time())
    old = sign_headers("s1", "POST", "/x", BODY, CTX, timestamp=now - 61)
    with pytest.raises(SignatureError, match="stale"):
        verify_signature(["s1"], "POST", "/x", BODY, old)
    future = sign_headers("s1", "POST", "/x", BODY, CTX, timestamp=now + 120)
    with pytest.raises(SignatureError, match="stale"):
        verify_signature(["s1"], "POST", "/x", BODY, future)
    fresh = sign_headers("s1", "POST", "/x", BODY, CTX, timestamp=now - 30)
    assert verify_signature(["s1"], "POST", "/x", BODY, fresh).key == 7


def test_client_module_stays_light() -> None:
    # The gateway imports it on every process; it must not drag in the model stack.
    code = (
        "import sys, wire.client; "
        "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'starlette') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_tenant_and_key_travel_as_integers() -> None:
    headers = sign_headers("s1", "POST", "/v1/completions", BODY, CTX)
    assert (headers[HEADER_TENANT], headers[HEADER_KEY]) == ("42", "7")
    ctx = verify_signature(["s1"], "POST", "/v1/completions", BODY, headers)
    assert (ctx.tenant, ctx.key) == (42, 7)
    keyless = SignedContext(tenant=0, key=None, request_id="pull")
    headers = sign_headers("s1", "GET", "/internal/usage?after=0", b"", keyless)
    assert headers[HEADER_KEY] == ""
    assert verify_signature(["s1"], "GET", "/internal/usage?after=0", b"", headers) == keyless


def test_a_signed_but_malformed_tenant_is_refused() -> None:
    # Signed with the right secret, but the context does not say an integer: not a request we know.
    bad = {**SignedContext(tenant=1, key=1, request_id="r").header_values(), HEADER_TENANT: "acme"}

    class Raw(SignedContext):
        def header_values(self) -> dict[str, str]:
            return bad

    headers = sign_headers("s1", "POST", "/x", BODY, Raw(tenant=1, key=1, request_id="r"))
    with pytest.raises(SignatureError, match="integer"):
        verify_signature(["s1"], "POST", "/x", BODY, headers)
