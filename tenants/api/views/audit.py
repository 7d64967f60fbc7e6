"""The audit log of a tenant: read-only, filterable, paginated."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.serializers import MAX_BIGINT, StrictSerializer, page_serializer
from tenants import selectors
from tenants.api.base import TenantScopedAPIView


class AuditEventOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    action = serializers.CharField()
    actor = serializers.CharField(source="actor_label")
    actor_user_id = serializers.IntegerField(allow_null=True)
    actor_key_id = serializers.IntegerField(allow_null=True)
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)
    ip = serializers.IPAddressField(allow_null=True)
    request_id = serializers.CharField()


class AuditEventListApi(TenantScopedAPIView):
    required_scopes = {"GET": "audit:read"}

    class AuditEventFilterSerializer(StrictSerializer):
        action = serializers.RegexField(
            r"^[a-z_]+(\.[a-z_]+)?$", max_length=64, required=False, help_text="`key` or `key.revoke`"
        )
        actor = serializers.CharField(max_length=254, required=False, help_text="an email or a masked key")
        actor_user_id = serializers.IntegerField(min_value=1, max_value=MAX_BIGINT, required=False)
        actor_key_id = serializers.IntegerField(min_value=1, max_value=MAX_BIGINT, required=False)
        created_after = serializers.DateTimeField(required=False, help_text="ISO 8601, inclusive")
        created_before = serializers.DateTimeField(required=False, help_text="ISO 8601, exclusive")
        page = serializers.IntegerField(min_value=1, required=False)
        page_size = serializers.IntegerField(min_value=1, max_value=200, required=False)

        def validate(self, attrs: dict[str, object]) -> dict[str, object]:
            after, before = attrs.get("created_after"), attrs.get("created_before")
            if after is not None and before is not None and after >= before:  # type: ignore[operator]
                raise serializers.ValidationError(
                    {"created_before": ["created_before must be later than created_after."]}
                )
            return attrs

    @extend_schema(
        operation_id="audit_events_list",
        parameters=[AuditEventFilterSerializer],
        responses=page_serializer("AuditEventPage", AuditEventOutputSerializer),
    )
    def get(self, request: Request, slug: str) -> Response:
        filters = self.AuditEventFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        values = filters.validated_data
        events = selectors.audit_event_list(
            tenant=self.tenant,
            action=values.get("action"),
            actor=values.get("actor"),
            actor_user_id=values.get("actor_user_id"),
            actor_key_id=values.get("actor_key_id"),
            created_after=values.get("created_after"),
            created_before=values.get("created_before"),
        )
        return self.paginated(request, events, AuditEventOutputSerializer)
