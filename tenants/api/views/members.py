"""Members of a tenant: list, change a role, remove."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.serializers import StrictSerializer, page_serializer
from tenants import selectors, services
from tenants.api.base import TenantScopedAPIView
from tenants.permissions import Role


class MemberOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    user_id = serializers.IntegerField()
    email = serializers.EmailField(source="user.email")
    full_name = serializers.CharField(source="user.full_name")
    role = serializers.CharField()
    created_at = serializers.DateTimeField()


class MemberListApi(TenantScopedAPIView):
    required_scopes = {"GET": "members:read"}

    @extend_schema(operation_id="members_list", responses=page_serializer("MemberPage", MemberOutputSerializer))
    def get(self, request: Request, slug: str) -> Response:
        return self.paginated(request, selectors.member_list(tenant=self.tenant), MemberOutputSerializer)


class MemberDetailApi(TenantScopedAPIView):
    required_scopes = {"GET": "members:read", "PATCH": "members:write", "DELETE": "members:write"}

    class MemberRoleInputSerializer(StrictSerializer):
        role = serializers.ChoiceField(choices=[r.value for r in Role])

        # A role change names the role although it is a PATCH: never partial, so the schema
        # (which marks a PATCH body partial) keeps `role` required.
        @property  # type: ignore[override]
        def partial(self) -> bool:
            return False

        @partial.setter
        def partial(self, value: bool) -> None:
            pass

    @extend_schema(operation_id="members_retrieve", responses=MemberOutputSerializer)
    def get(self, request: Request, slug: str, member_id: int) -> Response:
        membership = selectors.membership_get_in_tenant(member_id, self.tenant)
        return Response(MemberOutputSerializer(membership).data)

    @extend_schema(
        operation_id="members_role_change", request=MemberRoleInputSerializer, responses=MemberOutputSerializer
    )
    def patch(self, request: Request, slug: str, member_id: int) -> Response:
        membership = selectors.membership_get_in_tenant(member_id, self.tenant)
        data = self.MemberRoleInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_role_change(
            membership=membership, role=data.validated_data["role"], actor=self.actor, acting_role=self.acting_role
        )
        return Response(MemberOutputSerializer(membership).data)

    @extend_schema(operation_id="members_remove", request=None, responses={204: None})
    def delete(self, request: Request, slug: str, member_id: int) -> Response:
        membership = selectors.membership_get_in_tenant(member_id, self.tenant)
        services.membership_remove(membership=membership, actor=self.actor, acting_role=self.acting_role)
        return Response(status=status.HTTP_204_NO_CONTENT)
