"""Who may call /v1 with what: key authentication's answer as an error, model access (a model
the key may not use looks exactly like a missing one), the plan's input limits, quota refusals,
and the 503 of a database outage.
"""

import logging
import time

from django.db import DatabaseError
from django.http import HttpRequest

from gateway.conf import conf
from gateway.protocol import APIError, ParsedRequest
from gateway.quota import Decision
from gateway.registry import ModelRoute, Snapshot
from gateway.tokens import PromptCount
from tenants.keyauth import KEY_TENANT_SUSPENDED, akey_check, key_mark_used, key_mark_used_due
from tenants.types import KeyContext

logger = logging.getLogger(__name__)


# --- the database going away ---------------------------------------------------------------------
_outage_since: float | None = None


def database_unavailable(exc: BaseException) -> APIError:
    """A 503 the client may retry; logged once per outage, not once per request."""
    global _outage_since
    if _outage_since is None:
        _outage_since = time.monotonic()
        logger.error("gateway: the database is unreachable; /v1 answers 503 until it is back: %s", exc)
    return APIError(
        503,
        "The service is temporarily unavailable. Please retry shortly.",
        type="server_error",
        code="service_unavailable",
        headers={"retry-after": "2"},
    )


def database_available() -> None:
    """The database answered again: log the end of an outage once."""
    global _outage_since
    if _outage_since is not None:
        logger.warning("gateway: the database is reachable again after %.1f s", time.monotonic() - _outage_since)
        _outage_since = None


# --- authentication and access ------------------------------------------------------------------
async def authenticate(request: HttpRequest) -> KeyContext:
    header = request.headers.get("authorization", "")
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if not header or scheme.lower() != "bearer" or not raw:
        raise APIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    try:
        ctx, reason = await akey_check(raw)
    except DatabaseError as exc:  # a key not in the cache while the database is down
        raise database_unavailable(exc) from exc
    if reason == KEY_TENANT_SUSPENDED:
        raise APIError(403, "This organization is suspended.", type="permission_error", code="permission_denied")
    if ctx is None:
        masked = f"{raw[:3]}...{raw[-4:]}" if len(raw) > 8 else "***"
        raise APIError(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")
    if not ctx.has_scope("inference"):
        raise APIError(
            403, "This API key lacks the 'inference' scope.", type="permission_error", code="permission_denied"
        )
    # A note in memory, at most once a minute per key; tenants/keyuse.py carries it to the database.
    if conf().mark_keys_used and key_mark_used_due(ctx.key_id):
        key_mark_used(ctx.key_id, due_checked=True)
    return ctx


def models_allowed(snap: Snapshot, ctx: KeyContext) -> list[str]:
    """Models the tenant may use (plan or grant) narrowed by the key's allow-list."""
    names = snap.tenant_models(ctx.tenant_id)
    if ctx.allowed_models:
        names = names & ctx.allowed_models
    return sorted(n for n in names if n in snap.models)


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model '{name}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def model_check(snap: Snapshot, ctx: KeyContext, name: str) -> ModelRoute:
    """The model's route; a model this key may not use looks exactly like one that does not exist."""
    route = snap.models.get(name)
    if (
        route is None
        or name not in snap.tenant_models(ctx.tenant_id)
        or (ctx.allowed_models and name not in ctx.allowed_models)
    ):
        raise model_not_found(name)
    return route


def limits_check(parsed: ParsedRequest, ctx: KeyContext, counted: PromptCount | None = None) -> int:
    """Per-plan and per-model input limits; returns the number of output tokens to reserve (all n choices)."""
    lim = ctx.key_limits
    if lim.max_choices is not None and parsed.n > lim.max_choices:
        raise APIError(400, f"'n' must be at most {lim.max_choices} on this plan.", param="n", code="invalid_value")
    if lim.max_messages is not None and parsed.messages > lim.max_messages:
        raise APIError(
            400,
            f"Too many messages: {parsed.messages} (this plan allows {lim.max_messages}).",
            param="messages",
            code="too_many_messages",
        )
    prompt = parsed.prompt_estimate()
    prompt_param = "messages" if parsed.messages else "prompt"
    about = "" if parsed.prompt_tokens is not None else "about "
    if lim.max_prompt_tokens is not None and prompt > lim.max_prompt_tokens:
        raise APIError(
            400,
            f"The prompt is too long: {about}{prompt} tokens (this plan allows {lim.max_prompt_tokens}).",
            param=prompt_param,
            code="context_length_exceeded",
        )
    context = counted.context_length if counted is not None else None
    if context is not None and prompt >= context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens; the prompt has {prompt}.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if parsed.max_tokens is not None:
        if lim.max_output_tokens is not None and parsed.max_tokens > lim.max_output_tokens:
            raise APIError(
                400,
                f"max_tokens is too large: {parsed.max_tokens} (this plan allows {lim.max_output_tokens}).",
                param="max_tokens",
                code="invalid_value",
            )
        node_cap = counted.max_tokens if counted is not None else None
        if node_cap is not None and parsed.max_tokens > node_cap:
            raise APIError(
                400, f"max_tokens must be at most {node_cap} on this model.", param="max_tokens", code="invalid_value"
            )
        if context is not None and prompt + parsed.max_tokens > context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens; the prompt ({prompt}) plus max_tokens "
                f"({parsed.max_tokens}) exceeds it.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return parsed.max_tokens * parsed.n
    room = context - prompt if context is not None else None
    if lim.max_output_tokens is not None:
        # Make the plan's cap explicit so the node stops there and the reservation holds.
        parsed.body["max_tokens"] = lim.max_output_tokens
        parsed.body.pop("max_completion_tokens", None)
        return lim.max_output_tokens * parsed.n
    default = conf().default_reserve_tokens
    # Each of the n choices may run as long as one.
    return (default if room is None else min(default, room)) * parsed.n


def rate_limit_error(decision: Decision) -> APIError:
    headers = decision.headers()
    if decision.code == "insufficient_quota":
        what = "spend cap" if decision.reason == "monthly_spend" else "token budget"
        return APIError(
            429,
            f"You exceeded your current quota: the monthly {what} is used up.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    messages = {
        "requests": "Rate limit reached for requests per minute.",
        "tokens": "Rate limit reached for tokens per minute.",
        "request_too_large": "Request too large: it needs more tokens than the tokens-per-minute limit allows.",
        "concurrency": "Too many concurrent requests.",
    }
    return APIError(
        429,
        f"{messages.get(decision.reason, 'Rate limit reached.')} Please try again later.",
        type="tokens" if decision.reason in ("tokens", "request_too_large") else "requests",
        code="rate_limit_exceeded",
        headers=headers,
    )
