"""Small helpers every test suite may import to make tenants, users and keys, and billing data.

They go through the tenants services, so rows look like the real thing (limits row, audit
events). Users get no password unless one is given (hashing is slow); sign them in with
`client.force_login(user)`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.models import Plan, Price, Subscription
from billing.services.ingestion import usage_records_insert
from core.audit import Actor
from tenants import services
from tenants.models import APIKey, KeyKind, Tenant, User
from tenants.permissions import ALL_SCOPES, Role
from wire.usage import JournalRecord, Outcome

_counter = itertools.count(1)
_journal_seq = itertools.count(1)
SYSTEM = Actor(label="tests")


def unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


def user(email: str | None = None, *, password: str | None = None, is_staff: bool = False, **extra: Any) -> User:
    return services.user_create(
        email=email or f"{unique('user')}@example.com", password=password, is_staff=is_staff, **extra
    )


def staff_user(email: str | None = None, *, password: str | None = None) -> User:
    return user(email or f"{unique('staff')}@example.com", password=password, is_staff=True)


def tenant(slug: str | None = None, *, name: str | None = None, **limits: Any) -> Tenant:
    """An active tenant; keyword arguments set its limits (requests_per_minute=..., ...)."""
    slug = slug or unique("tenant")
    created = services.tenant_create(slug=slug, name=name or slug.title(), actor=SYSTEM)
    if limits:
        services.limits_update(tenant=created, actor=SYSTEM, **limits)
    return created


def member(tenant_: Tenant, role: Role | str, *, email: str | None = None, password: str | None = None) -> User:
    """A new user with `role` in the tenant."""
    role = Role(role)
    new_user = user(email or f"{role.value}-{unique('')}@{tenant_.slug}.example.com", password=password)
    services.membership_create(tenant=tenant_, user=new_user, role=role, actor=SYSTEM)
    return new_user


def tenant_with_members(
    slug: str | None = None,
    *,
    roles: Iterable[Role | str] = tuple(Role),
    password: str | None = None,
    **limits: Any,
) -> tuple[Tenant, dict[Role, User]]:
    """A tenant with one user per role (owner, admin, developer, finance, viewer); keyword
    arguments set its limits."""
    created = tenant(slug, **limits)
    users = {Role(role): member(created, role, password=password) for role in roles}
    return created, users


def inference_key(
    tenant_: Tenant,
    user_: User | None = None,
    *,
    name: str = "test inference key",
    scopes: Iterable[str] | None = None,
    **kwargs: Any,
) -> tuple[APIKey, str]:
    """An inference key (sk-...) and its plaintext. kwargs: allowed_models, expires_at, limits."""
    grantable = None if user_ is not None else frozenset({"inference", "models:read"})
    return services.key_create(
        tenant=tenant_,
        created_by=user_,
        name=name,
        scopes=scopes,
        kind=KeyKind.INFERENCE,
        actor=SYSTEM,
        grantable_scopes=grantable,
        **kwargs,
    )


def admin_key(
    tenant_: Tenant, user_: User | None = None, scopes: Iterable[str] | None = None, *, name: str = "test admin key"
) -> tuple[APIKey, str]:
    """An admin key (sk-admin-...); scopes default to the creator's role's (every scope with no user)."""
    grantable = None if user_ is not None else frozenset(ALL_SCOPES) - {"inference"}
    return services.key_create(
        tenant=tenant_,
        created_by=user_,
        name=name,
        scopes=scopes,
        kind=KeyKind.ADMIN,
        actor=SYSTEM,
        grantable_scopes=grantable,
    )


def session_client(user_: User) -> Any:
    """A DRF test client signed in as the user (session auth, CSRF not enforced)."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(user_)
    return client


def key_client(raw: str) -> Any:
    """A DRF test client that sends `Authorization: Bearer <raw>` on every request."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


# --- billing ---------------------------------------------------------------------------------
def journal_record(
    tenant: Tenant | int,
    *,
    key: int | None = None,
    model: str = "demo-llama",
    version: str = "demo-llama@v1",
    prompt: int = 10,
    completion: int = 20,
    outcome: Outcome = "stop",
    at: datetime | None = None,
    request_id: str | None = None,
    client_request_id: str = "",
) -> dict[str, Any]:
    """One record in the inference plane's journal format, as a page carries it.

    `request_id` is the attempt's id; `client_request_id` the client's ("" reads as the same).
    """
    started = at or datetime.now(UTC)
    return JournalRecord(
        seq=next(_journal_seq),
        request_id=request_id or f"req-{uuid.uuid4().hex}",
        client_request_id=client_request_id,
        tenant=tenant if isinstance(tenant, int) else tenant.pk,
        key=key,
        model=model,
        model_version=version,
        prompt_tokens=prompt,
        completion_tokens=completion,
        outcome=outcome,
        queue_ms=1,
        ttft_ms=5,
        duration_ms=40,
        started_at=started.isoformat(),
        finished_at=(started + timedelta(milliseconds=40)).isoformat(),
    ).model_dump()


def ledger_add(records: list[dict[str, Any]], *, node: str = "node-test") -> int:
    """Inserts records the way ingestion does (prices, ledger, rollups) without a node."""
    return usage_records_insert([JournalRecord.model_validate(r) for r in records], node_name=node).inserted


@dataclass
class PricedPlan:
    plan: Plan
    price: Price


def plan_with_price(
    *,
    name: str | None = None,
    currency: str = "USD",
    base_fee: str = "0",
    included_tokens: int = 0,
    model: str = "demo-llama",
    input_per_1m: str = "1.000000",
    output_per_1m: str = "2.000000",
    effective_from: datetime | None = None,
) -> PricedPlan:
    """A plan and a price created directly: fixtures often need prices in the past, which the
    service (rightly) refuses."""
    plan = Plan.objects.create(
        name=name or f"plan-{uuid.uuid4().hex[:8]}",
        currency=currency,
        base_fee=Decimal(base_fee),
        included_tokens=included_tokens,
    )
    price = Price.objects.create(
        plan=plan,
        model_name=model,
        input_per_1m=Decimal(input_per_1m),
        output_per_1m=Decimal(output_per_1m),
        effective_from=effective_from or datetime(2020, 1, 1, tzinfo=UTC),
    )
    return PricedPlan(plan, price)


def subscribe_directly(tenant: Tenant, plan: Plan, *, starts_at: datetime | None = None) -> Subscription:
    return Subscription.objects.create(
        tenant=tenant, plan=plan, starts_at=starts_at or datetime(2020, 1, 1, tzinfo=UTC)
    )
