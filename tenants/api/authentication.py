"""Admin keys as Bearer tokens for the management API (sessions are DRF's SessionAuthentication)."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from tenants import services
from tenants.models import KeyKind
from tenants.types import KeyContext

_REJECTED: dict[str, str] = {
    services.KEY_UNKNOWN: "Invalid API key.",
    services.KEY_REVOKED: "This API key was revoked.",
    services.KEY_EXPIRED: "This API key has expired.",
    services.KEY_TENANT_SUSPENDED: "This API key's tenant is suspended.",
    services.KEY_TENANT_CLOSED: "This API key's tenant is closed.",
}


@dataclass(frozen=True, slots=True)
class KeyPrincipal:
    """`request.user` when an admin key authenticated; `request.auth` is its KeyContext."""

    context: KeyContext

    is_authenticated: bool = True
    is_anonymous: bool = False
    is_staff: bool = False
    is_active: bool = True

    @property
    def pk(self) -> None:
        return None

    # What `core.api.views.KeyPrincipalLike` reads to build the audit actor.
    @property
    def key_id(self) -> int:
        return self.context.key_id

    @property
    def actor_label(self) -> str:
        return self.context.label or f"key {self.context.key_id}"

    def __str__(self) -> str:
        return f"key {self.context.key_id}"


class AdminKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer sk-admin-...`. Inference keys are refused here."""

    keyword = "bearer"

    def authenticate(self, request: Request) -> tuple[KeyPrincipal, KeyContext] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.encode():
            return None  # not ours: let session authentication try
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: use 'Bearer sk-admin-...'.", code="invalid_api_key"
            )
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid API key.", code="invalid_api_key") from exc
        if not raw.startswith(services.ADMIN_PREFIX):
            raise exceptions.AuthenticationFailed(
                "The management API needs an admin key (sk-admin-...), not an inference key.", code="invalid_api_key"
            )
        context, reason = services.key_check(raw)
        if context is None or context.kind != KeyKind.ADMIN:
            raise exceptions.AuthenticationFailed(_REJECTED.get(reason, "Invalid API key."), code="invalid_api_key")
        services.key_mark_used(context.key_id)
        return KeyPrincipal(context), context

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
