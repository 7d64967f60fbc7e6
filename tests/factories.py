"""Small helpers every test suite may import to make tenants, users and keys.

They go through the tenants services, so rows look like the real thing (limits row, audit
events). Users get no password unless one is given (hashing is slow); sign them in with
`client.force_login(user)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from tenants import services
from tenants.models import APIKey, KeyKind, Tenant, User
from tenants.permissions import ALL_SCOPES, Role
from tenants.types import Actor

_counter = itertools.count(1)
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
