"""drf-spectacular description of admin-key authentication (loaded by TenantsConfig.ready)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

import core.api.schema  # noqa: F401  (registers the StrictCharField schema extension)


class AdminKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api.authentication.AdminKeyAuthentication"
    name = "adminKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk-admin-...",
            "description": "An admin key of the tenant: `Authorization: Bearer sk-admin-...`.",
        }
