"""The tenant context the gateway signs into every request: who it is for and what to enforce."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

HEADER_TENANT = "x-mmorch-tenant"
HEADER_KEY = "x-mmorch-key"
HEADER_REQUEST_ID = "x-request-id"
HEADER_WEIGHT = "x-mmorch-weight"
HEADER_MAX_INFLIGHT = "x-mmorch-max-inflight"
HEADER_MAX_QUEUED = "x-mmorch-max-queued"
HEADER_PRIORITY = "x-mmorch-priority"
HEADER_MODEL_VERSION = "x-mmorch-model-version"
HEADER_CLIENT_REQUEST_ID = "x-mmorch-client-request-id"
# The request's trace (a W3C traceparent). Signed when present and only then, so untraced
# requests keep the canonical string older nodes and gateways know (wire/signing.py).
HEADER_TRACEPARENT = "x-mmorch-traceparent"
_TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

# Order matters: it is part of the canonical string both sides sign.
CONTEXT_HEADERS: tuple[str, ...] = (
    HEADER_TENANT,
    HEADER_KEY,
    HEADER_REQUEST_ID,
    HEADER_WEIGHT,
    HEADER_MAX_INFLIGHT,
    HEADER_MAX_QUEUED,
    HEADER_PRIORITY,
    HEADER_MODEL_VERSION,
    HEADER_CLIENT_REQUEST_ID,
)


class ContextError(ValueError):
    """A context header does not hold what it must."""


@dataclass(frozen=True, slots=True)
class SignedContext:
    """Who a request is for and the limits the gateway wants enforced (0 = no cap).

    `tenant` is the tenant's id (0 for the control plane's own calls, e.g. a journal pull) and
    `key` the API key's id, None when no key is involved. `request_id` names this attempt (unique:
    the journal and the ledger key on it); `client_request_id` is the client's `x-request-id`, kept
    for correlation only ("" when it is the attempt's own). `traceparent` names the gateway's span
    the node's work belongs to ("" when the request is not traced).
    """

    tenant: int
    key: int | None
    request_id: str
    weight: int = 1
    max_inflight: int = 0
    max_queued: int = 0
    priority: int = 0
    model_version: str = ""
    client_request_id: str = ""
    traceparent: str = ""

    def header_values(self) -> dict[str, str]:
        values = {
            HEADER_TENANT: str(self.tenant),
            HEADER_KEY: "" if self.key is None else str(self.key),
            HEADER_REQUEST_ID: self.request_id,
            HEADER_WEIGHT: str(self.weight),
            HEADER_MAX_INFLIGHT: str(self.max_inflight),
            HEADER_MAX_QUEUED: str(self.max_queued),
            HEADER_PRIORITY: str(self.priority),
            HEADER_MODEL_VERSION: self.model_version,
            HEADER_CLIENT_REQUEST_ID: self.client_request_id,
        }
        if self.traceparent:
            values[HEADER_TRACEPARENT] = self.traceparent
        return values

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignedContext:
        """The context from lower-cased header names; raises ContextError on a malformed value."""
        key = headers.get(HEADER_KEY, "")
        traceparent = headers.get(HEADER_TRACEPARENT, "")
        return cls(
            tenant=_int_header(headers, HEADER_TENANT, minimum=0),
            key=None if key == "" else _int_header(headers, HEADER_KEY, minimum=0),
            request_id=headers.get(HEADER_REQUEST_ID, ""),
            weight=max(_int_header(headers, HEADER_WEIGHT, minimum=0), 1),
            max_inflight=_int_header(headers, HEADER_MAX_INFLIGHT, minimum=0),
            max_queued=_int_header(headers, HEADER_MAX_QUEUED, minimum=0),
            priority=_int_header(headers, HEADER_PRIORITY, minimum=-(2**31)),
            model_version=headers.get(HEADER_MODEL_VERSION, ""),
            client_request_id=headers.get(HEADER_CLIENT_REQUEST_ID, ""),
            # A malformed trace context loses the trace, never the request.
            traceparent=traceparent if _TRACEPARENT_RE.match(traceparent) else "",
        )


def _int_header(values: Mapping[str, str], name: str, *, minimum: int) -> int:
    raw = values.get(name, "") or "0"
    try:
        value = int(raw)
    except ValueError as exc:
        raise ContextError(f"header {name} must be an integer") from exc
    if value < minimum:
        raise ContextError(f"header {name} must be >= {minimum}")
    return value
