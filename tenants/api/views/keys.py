"""API keys of a tenant: create (the plaintext is in that one response), list, read, edit, revoke, rotate."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.serializers import (
    MAX_BIGINT,
    MoneyField,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
    page_serializer,
)
from tenants import selectors, services
from tenants.api.base import TenantScopedAPIView
from tenants.models import APIKey, KeyKind, User
from tenants.permissions import ALL_SCOPES
from tenants.selectors import LIMIT_FIELDS


def key_status(key: APIKey) -> str:
    now = timezone.now()
    if key.revoked_at is not None:
        return "revoked" if key.revoked_at <= now else "rotating"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


class KeyOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    key = serializers.CharField(source="masked", help_text="The masked key: prefix and last 4 characters.")
    prefix = serializers.CharField()
    last4 = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    allowed_models = serializers.ListField(child=serializers.CharField())
    status = serializers.SerializerMethodField()
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    replaced_by = serializers.IntegerField(source="replaced_by_id", allow_null=True)
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    max_concurrent_requests = serializers.IntegerField(allow_null=True)
    monthly_token_budget = serializers.IntegerField(allow_null=True)
    monthly_spend_cap = serializers.DecimalField(max_digits=14, decimal_places=6, allow_null=True)

    def get_status(self, key: APIKey) -> str:
        return key_status(key)


class KeyWithSecretOutputSerializer(KeyOutputSerializer):
    secret = serializers.SerializerMethodField(help_text="The plaintext key. Shown once; store it now.")

    def get_secret(self, key: APIKey) -> str:
        return str(self.context["secret"])


class _LimitOverridesInput(StrictSerializer):
    requests_per_minute = StrictIntegerField(min_value=0, allow_null=True, required=False)
    tokens_per_minute = StrictIntegerField(min_value=0, allow_null=True, required=False)
    max_concurrent_requests = StrictIntegerField(min_value=0, allow_null=True, required=False)
    monthly_token_budget = StrictIntegerField(min_value=0, max_value=MAX_BIGINT, allow_null=True, required=False)
    monthly_spend_cap = MoneyField(allow_null=True, required=False)


def _limits_of(data: dict[str, Any]) -> dict[str, Any]:
    return {name: data[name] for name in LIMIT_FIELDS if name in data}


class KeyListCreateApi(TenantScopedAPIView):
    required_scopes = {"GET": "keys:read", "POST": "keys:write"}

    class FilterSerializer(StrictSerializer):
        kind = serializers.ChoiceField(choices=KeyKind.choices, required=False)
        include_revoked = serializers.BooleanField(required=False, default=True)
        page = serializers.IntegerField(min_value=1, required=False)
        page_size = serializers.IntegerField(min_value=1, max_value=200, required=False)

    class KeyCreateInputSerializer(_LimitOverridesInput):
        name = StrictCharField(max_length=100)
        kind = serializers.ChoiceField(choices=KeyKind.choices, default=KeyKind.INFERENCE)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ALL_SCOPES),
            required=False,
            allow_empty=False,
            max_length=len(ALL_SCOPES),
        )
        allowed_models = serializers.ListField(child=StrictCharField(max_length=200), required=False, max_length=100)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    @extend_schema(
        operation_id="keys_list",
        parameters=[FilterSerializer],
        responses=page_serializer("KeyPage", KeyOutputSerializer),
    )
    def get(self, request: Request, slug: str) -> Response:
        filters = self.FilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        keys = selectors.key_list(
            tenant=self.tenant,
            created_by_id=None if self.manages_all_keys else self.acting_user_id,
            kind=filters.validated_data.get("kind"),
            include_revoked=filters.validated_data["include_revoked"],
        )
        return self.paginated(request, keys, KeyOutputSerializer)

    @extend_schema(
        operation_id="keys_create", request=KeyCreateInputSerializer, responses={201: KeyWithSecretOutputSerializer}
    )
    def post(self, request: Request, slug: str) -> Response:
        data = self.KeyCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        creator = User.objects.filter(pk=self.acting_user_id).first() if self.acting_user_id else None
        key, raw = services.key_create(
            tenant=self.tenant,
            created_by=creator,
            name=values["name"],
            kind=values["kind"],
            scopes=values.get("scopes"),
            allowed_models=values.get("allowed_models", []),
            expires_at=values.get("expires_at"),
            limits=_limits_of(values),
            grantable_scopes=self.scopes,
            actor=self.actor,
        )
        body = KeyWithSecretOutputSerializer(key, context={"secret": raw}).data
        return Response(body, status=status.HTTP_201_CREATED)


class KeyDetailApi(TenantScopedAPIView):
    required_scopes = {"GET": "keys:read", "PATCH": "keys:write"}

    class KeyUpdateInputSerializer(_LimitOverridesInput):
        name = StrictCharField(max_length=100, required=False)
        allowed_models = serializers.ListField(child=StrictCharField(max_length=200), required=False, max_length=100)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    def _key(self, key_id: int) -> APIKey:
        return selectors.key_get_in_tenant(
            key_id, self.tenant, created_by_id=None if self.manages_all_keys else self.acting_user_id
        )

    @extend_schema(operation_id="keys_retrieve", responses=KeyOutputSerializer)
    def get(self, request: Request, slug: str, key_id: int) -> Response:
        return Response(KeyOutputSerializer(self._key(key_id)).data)

    @extend_schema(operation_id="keys_update", request=KeyUpdateInputSerializer, responses=KeyOutputSerializer)
    def patch(self, request: Request, slug: str, key_id: int) -> Response:
        key = self._key(key_id)
        data = self.KeyUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        changes = {name: values[name] for name in ("name", "allowed_models", "expires_at") if name in values}
        key = services.key_update(
            key=key,
            actor=self.actor,
            acting_role=self.acting_role,
            acting_user_id=self.acting_user_id,
            limits=_limits_of(values),
            **changes,
        )
        return Response(KeyOutputSerializer(selectors.key_get_in_tenant(key.pk, self.tenant)).data)


class KeyRevokeApi(TenantScopedAPIView):
    required_scopes = {"POST": "keys:write"}

    @extend_schema(operation_id="keys_revoke", request=None, responses=KeyOutputSerializer)
    def post(self, request: Request, slug: str, key_id: int) -> Response:
        key = selectors.key_get_in_tenant(
            key_id, self.tenant, created_by_id=None if self.manages_all_keys else self.acting_user_id
        )
        self.require_empty_body(request)
        key = services.key_revoke(
            key=key, actor=self.actor, acting_role=self.acting_role, acting_user_id=self.acting_user_id
        )
        return Response(KeyOutputSerializer(selectors.key_get_in_tenant(key.pk, self.tenant)).data)


class KeyRotateApi(TenantScopedAPIView):
    required_scopes = {"POST": "keys:write"}

    class KeyRotateInputSerializer(StrictSerializer):
        grace_seconds = StrictIntegerField(
            min_value=0,
            max_value=int(services.MAX_ROTATION_GRACE.total_seconds()),
            default=0,
            help_text="How long the old key keeps working.",
        )

    @extend_schema(
        operation_id="keys_rotate",
        request=KeyRotateInputSerializer,
        responses={201: KeyWithSecretOutputSerializer},
    )
    def post(self, request: Request, slug: str, key_id: int) -> Response:
        key = selectors.key_get_in_tenant(
            key_id, self.tenant, created_by_id=None if self.manages_all_keys else self.acting_user_id
        )
        data = self.KeyRotateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        new, raw = services.key_rotate(
            key=key,
            actor=self.actor,
            grace=timedelta(seconds=data.validated_data["grace_seconds"]),
            acting_role=self.acting_role,
            acting_user_id=self.acting_user_id,
        )
        new = selectors.key_get_in_tenant(new.pk, self.tenant)
        return Response(
            KeyWithSecretOutputSerializer(new, context={"secret": raw}).data, status=status.HTTP_201_CREATED
        )
