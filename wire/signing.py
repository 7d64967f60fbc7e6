"""HMAC request signing: over method, path (with query), body digest, timestamp and the context headers
(the trace context among them when the request is traced)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from wire.context import CONTEXT_HEADERS, HEADER_TRACEPARENT, ContextError, SignedContext

HEADER_TIMESTAMP = "x-mmorch-timestamp"
HEADER_SIGNATURE = "x-mmorch-signature"
SIGNATURE_PREFIX = "v1="


class SignatureError(Exception):
    """The request's signature is missing, wrong or stale, or its signed context is malformed."""


def _canonical(method: str, path: str, body: bytes, timestamp: str, context: Mapping[str, str]) -> bytes:
    lines = [method.upper(), path, hashlib.sha256(body).hexdigest(), timestamp]
    lines.extend(f"{name}:{context.get(name, '')}" for name in CONTEXT_HEADERS)
    traceparent = context.get(HEADER_TRACEPARENT, "")
    if traceparent:
        # Only when present: an untraced request signs exactly as before, and a traceparent
        # added to or stripped from a signed request breaks its signature.
        lines.append(f"{HEADER_TRACEPARENT}:{traceparent}")
    return "\n".join(lines).encode()


def _digest(secret: str, message: bytes) -> str:
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_headers(
    secret: str, method: str, path: str, body: bytes, ctx: SignedContext, *, timestamp: int | None = None
) -> dict[str, str]:
    """Every context header plus timestamp and signature; `path` includes the query string."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = ctx.header_values()
    headers[HEADER_TIMESTAMP] = ts
    headers[HEADER_SIGNATURE] = _digest(secret, _canonical(method, path, body, ts, headers))
    return headers


def verify_signature(
    secrets: Sequence[str],
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    max_skew: int = 60,
) -> SignedContext:
    """Check the gateway's signature (any of `secrets`, for rotation) and return the signed context."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signature = lowered.get(HEADER_SIGNATURE, "")
    ts_raw = lowered.get(HEADER_TIMESTAMP, "")
    if not signature or not ts_raw:
        raise SignatureError("missing signature")
    try:
        ts = int(ts_raw)
    except ValueError as exc:
        raise SignatureError("malformed timestamp") from exc
    current = time.time() if now is None else now
    if abs(current - ts) > max_skew:
        raise SignatureError("stale signature")
    message = _canonical(method, path, body, ts_raw, lowered)
    # Check every secret so timing does not reveal which one matched.
    matched = False
    for secret in secrets:
        if secret and hmac.compare_digest(_digest(secret, message), signature):
            matched = True
    if not matched:
        raise SignatureError("wrong signature")
    try:
        return SignedContext.from_headers(lowered)
    except ContextError as exc:
        raise SignatureError(str(exc)) from exc
