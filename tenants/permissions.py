"""The one permission table: which scopes each role holds.

The management API, the dashboard and API keys all check scopes from here. A key's scopes
are a subset of its creator's; platform staff hold every scope in every tenant.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    DEVELOPER = "developer"
    FINANCE = "finance"
    VIEWER = "viewer"


# Scopes read `resource:read` / `resource:write`; `inference` lets a key call /v1.
ALL_SCOPES: tuple[str, ...] = (
    "inference",
    "keys:read",
    "keys:write",
    "members:read",
    "members:write",
    "usage:read",
    "billing:read",
    "billing:write",
    "models:read",
    "models:write",
    "limits:read",
    "limits:write",
    "audit:read",
    "tenant:read",
)

ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.OWNER: frozenset(
        {
            "inference",
            "keys:read",
            "keys:write",
            "members:read",
            "members:write",
            "usage:read",
            "billing:read",
            "billing:write",
            "models:read",
            "limits:read",
            "audit:read",
            "tenant:read",
        }
    ),
    Role.ADMIN: frozenset(
        {
            "inference",
            "keys:read",
            "keys:write",
            "members:read",
            "members:write",
            "usage:read",
            "models:read",
            "limits:read",
            "audit:read",
            "tenant:read",
        }
    ),
    # Developers read and write keys, but only their own (enforced by the key services).
    Role.DEVELOPER: frozenset({"inference", "keys:read", "keys:write", "usage:read", "models:read", "tenant:read"}),
    Role.FINANCE: frozenset({"usage:read", "billing:read", "limits:read", "tenant:read", "members:read"}),
    Role.VIEWER: frozenset({"usage:read", "models:read", "limits:read", "tenant:read", "members:read"}),
}

# Scopes only platform staff hold (plans, prices, limits, the model registry).
STAFF_ONLY_SCOPES: frozenset[str] = frozenset({"limits:write", "models:write"})
STAFF_SCOPES: frozenset[str] = frozenset(ALL_SCOPES)

# Roles whose keys manage every key of the tenant, not only their own.
KEY_MANAGER_ROLES: frozenset[Role] = frozenset({Role.OWNER, Role.ADMIN})


def scopes_for_role(role: str | Role) -> frozenset[str]:
    return ROLE_SCOPES[Role(role)]


def role_has_scope(role: str | Role, scope: str) -> bool:
    return scope in ROLE_SCOPES[Role(role)]
