"""The trace context inside the signed request context, and the tracing switch's off state."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from dataclasses import replace

import pytest

from wire.context import CONTEXT_HEADERS, HEADER_TRACEPARENT, SignedContext
from wire.signing import HEADER_SIGNATURE, HEADER_TIMESTAMP, SignatureError, sign_headers, verify_signature
from wire.tracing import trace_id_of, tracing_endpoint

SECRET = "trace-secret"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CTX = SignedContext(tenant=5, key=9, request_id="att-1", client_request_id="req-1", traceparent=TRACEPARENT)
PATH = "/v1/chat/completions"
BODY = b'{"model":"m"}'


def signed(ctx: SignedContext = CTX) -> dict[str, str]:
    return sign_headers(SECRET, "POST", PATH, BODY, ctx, timestamp=1_000)


def verify(headers: dict[str, str]) -> SignedContext:
    return verify_signature([SECRET], "POST", PATH, BODY, headers, now=1_000)


def test_a_traced_request_carries_its_traceparent_under_the_signature() -> None:
    headers = signed()
    assert headers[HEADER_TRACEPARENT] == TRACEPARENT
    assert verify(headers) == CTX


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h.update({HEADER_TRACEPARENT: TRACEPARENT.replace("b7ad", "0000")}),  # another parent
        lambda h: h.pop(HEADER_TRACEPARENT),  # stripped
    ],
)
def test_a_changed_or_stripped_traceparent_breaks_the_signature(change: object) -> None:
    headers = signed()
    change(headers)  # type: ignore[operator]
    with pytest.raises(SignatureError, match="wrong signature"):
        verify(headers)


def test_a_traceparent_added_to_an_untraced_request_breaks_the_signature() -> None:
    headers = signed(replace(CTX, traceparent=""))
    assert HEADER_TRACEPARENT not in headers
    headers[HEADER_TRACEPARENT] = TRACEPARENT
    with pytest.raises(SignatureError, match="wrong signature"):
        verify(headers)


def test_an_untraced_request_signs_the_canonical_string_it_always_had() -> None:
    # Nodes and gateways of the previous release verify what this one signs without a trace.
    ctx = replace(CTX, traceparent="")
    headers = signed(ctx)
    values = ctx.header_values()
    canonical = "\n".join(
        ["POST", PATH, hashlib.sha256(BODY).hexdigest(), "1000", *(f"{n}:{values[n]}" for n in CONTEXT_HEADERS)]
    )
    expected = "v1=" + hmac.new(SECRET.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert headers[HEADER_SIGNATURE] == expected and headers[HEADER_TIMESTAMP] == "1000"


def test_a_malformed_signed_traceparent_loses_the_trace_not_the_request() -> None:
    ctx = verify(signed(replace(CTX, traceparent="00-not-a-trace")))
    assert ctx.traceparent == "" and ctx.request_id == "att-1"


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        (TRACEPARENT, "0af7651916cd43dd8448eb211c80319c"),
        ("", ""),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", ""),  # the invalid all-zero id
        ("01-0af7651916cd43dd8448eb211c80319c", ""),
    ],
)
def test_trace_id_of(traceparent: str, trace_id: str) -> None:
    assert trace_id_of(traceparent) == trace_id


def test_tracing_is_on_only_with_an_endpoint() -> None:
    assert tracing_endpoint({}) == ""
    assert tracing_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": " http://c:4318 "}) == "http://c:4318"
    assert tracing_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"}) == (
        "http://t:4318/v1/traces"
    )


def test_tracing_off_installs_nothing_and_imports_no_sdk() -> None:
    code = (
        "import sys\n"
        "from wire import tracing\n"
        "assert tracing.tracing_setup('x') is False and not tracing.tracing_enabled()\n"
        "with tracing.span('a') as s: assert s is None\n"
        "assert tracing.traceparent_current() == '' and tracing.context_current() is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.sdk')]\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
