"""Tenant limits: members with limits:read read them; platform staff (limits:write) set them."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.serializers import MAX_BIGINT, MoneyField, StrictIntegerField, StrictSerializer
from tenants import selectors, services
from tenants.api.base import TenantScopedAPIView


class LimitsOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    max_concurrent_requests = serializers.IntegerField(allow_null=True)
    monthly_token_budget = serializers.IntegerField(allow_null=True)
    monthly_spend_cap = serializers.DecimalField(max_digits=14, decimal_places=6, allow_null=True)
    scheduling_weight = serializers.IntegerField()
    max_prompt_tokens = serializers.IntegerField(allow_null=True)
    max_output_tokens = serializers.IntegerField(allow_null=True)
    max_messages = serializers.IntegerField(allow_null=True)
    max_choices = serializers.IntegerField(allow_null=True)
    updated_at = serializers.DateTimeField()


class LimitsInputSerializer(StrictSerializer):
    """Every field may be null (no limit) except scheduling_weight (>= 1)."""

    requests_per_minute = StrictIntegerField(min_value=0, allow_null=True)
    tokens_per_minute = StrictIntegerField(min_value=0, allow_null=True)
    max_concurrent_requests = StrictIntegerField(min_value=0, allow_null=True)
    monthly_token_budget = StrictIntegerField(min_value=0, max_value=MAX_BIGINT, allow_null=True)
    monthly_spend_cap = MoneyField(allow_null=True)
    scheduling_weight = StrictIntegerField(min_value=1, max_value=1_000_000)
    max_prompt_tokens = StrictIntegerField(min_value=0, allow_null=True)
    max_output_tokens = StrictIntegerField(min_value=0, allow_null=True)
    max_messages = StrictIntegerField(min_value=0, allow_null=True)
    # Not required on PUT: bodies written before the field existed keep working (left unchanged).
    max_choices = StrictIntegerField(min_value=1, max_value=128, allow_null=True, required=False)


class LimitsApi(TenantScopedAPIView):
    required_scopes = {"GET": "limits:read", "PUT": "limits:write", "PATCH": "limits:write"}

    @extend_schema(operation_id="limits_retrieve", responses=LimitsOutputSerializer)
    def get(self, request: Request, slug: str) -> Response:
        return Response(LimitsOutputSerializer(selectors.tenant_limits_get(self.tenant)).data)

    def _update(self, request: Request, *, partial: bool) -> Response:
        data = LimitsInputSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        fields: dict[str, Any] = dict(data.validated_data)
        limits = services.limits_update(tenant=self.tenant, actor=self.actor, **fields)
        return Response(LimitsOutputSerializer(limits).data)

    @extend_schema(operation_id="limits_replace", request=LimitsInputSerializer, responses=LimitsOutputSerializer)
    def put(self, request: Request, slug: str) -> Response:
        return self._update(request, partial=False)

    @extend_schema(operation_id="limits_update", request=LimitsInputSerializer, responses=LimitsOutputSerializer)
    def patch(self, request: Request, slug: str) -> Response:
        return self._update(request, partial=True)
