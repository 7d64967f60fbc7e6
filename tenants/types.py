"""Plain value types that other apps receive from `tenants` (no ORM objects on hot paths)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    """Limits that apply; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    monthly_token_budget: int | None = None
    monthly_spend_cap: Decimal | None = None
    scheduling_weight: int = 1
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    max_messages: int | None = None
    max_choices: int | None = None


@dataclass(frozen=True, slots=True)
class KeyContext:
    """What the gateway knows about an authenticated key, cached per process."""

    key_id: int
    tenant_id: int
    tenant_slug: str
    kind: str  # "inference" or "admin"
    scopes: frozenset[str]
    allowed_models: frozenset[str]  # empty: every model the tenant may use
    created_by_id: int | None
    # Limits of the key itself (its overrides, else the tenant's) and of the whole tenant.
    key_limits: EffectiveLimits
    tenant_limits: EffectiveLimits
    expires_at_ts: float | None  # epoch seconds; checked on every use, also warm
    label: str = ""  # the masked key ("sk-...abcd"), for logs and the audit log

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
