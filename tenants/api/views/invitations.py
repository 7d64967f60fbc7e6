"""Invitations: list, create (the token goes by email), revoke; and accepting one by its token."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.serializers import StrictCharField, StrictSerializer, page_serializer
from core.api.views import PublicAPIView
from core.audit import client_ip, request_id_of
from tenants import selectors, services
from tenants.api.base import TenantScopedAPIView
from tenants.models import InvitationStatus, User
from tenants.permissions import Role


class InvitationOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    email = serializers.EmailField()
    role = serializers.CharField()
    status = serializers.CharField()
    invited_by = serializers.EmailField(source="invited_by.email", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)


class InvitationListCreateApi(TenantScopedAPIView):
    required_scopes = {"GET": "members:read", "POST": "members:write"}

    class InvitationFilterSerializer(StrictSerializer):
        status = serializers.ChoiceField(choices=InvitationStatus.choices, required=False)
        page = serializers.IntegerField(min_value=1, required=False)
        page_size = serializers.IntegerField(min_value=1, max_value=200, required=False)

    class InvitationCreateInputSerializer(StrictSerializer):
        email = serializers.EmailField(max_length=254)
        role = serializers.ChoiceField(choices=[r.value for r in Role])

    @extend_schema(
        operation_id="invitations_list",
        parameters=[InvitationFilterSerializer],
        responses=page_serializer("InvitationPage", InvitationOutputSerializer),
    )
    def get(self, request: Request, slug: str) -> Response:
        filters = self.InvitationFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        invitations = selectors.invitation_list(tenant=self.tenant, status=filters.validated_data.get("status"))
        return self.paginated(request, invitations, InvitationOutputSerializer)

    @extend_schema(
        operation_id="invitations_create",
        request=InvitationCreateInputSerializer,
        responses={201: InvitationOutputSerializer},
    )
    def post(self, request: Request, slug: str) -> Response:
        data = self.InvitationCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        inviter = User.objects.filter(pk=self.acting_user_id).first() if self.acting_user_id else None
        invitation, _token = services.invitation_create(
            tenant=self.tenant,
            email=data.validated_data["email"],
            role=data.validated_data["role"],
            actor=self.actor,
            acting_role=self.acting_role,
            invited_by=inviter,
        )
        return Response(InvitationOutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationRevokeApi(TenantScopedAPIView):
    required_scopes = {"POST": "members:write"}

    @extend_schema(operation_id="invitations_revoke", request=None, responses=InvitationOutputSerializer)
    def post(self, request: Request, slug: str, invitation_id: int) -> Response:
        invitation = selectors.invitation_get_in_tenant(invitation_id, self.tenant)
        self.require_empty_body(request)
        invitation = services.invitation_revoke(invitation=invitation, actor=self.actor, acting_role=self.acting_role)
        return Response(InvitationOutputSerializer(invitation).data)


class InvitationAcceptApi(PublicAPIView):
    """The token from the email is the credential. A new user sets a password here; an
    existing user (or the signed-in one, whose email must match) is linked."""

    class InvitationAcceptInputSerializer(StrictSerializer):
        token = StrictCharField(max_length=200)
        password = StrictCharField(max_length=128, required=False, trim_whitespace=False)
        full_name = StrictCharField(max_length=200, required=False, allow_blank=True)

    class InvitationAcceptOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
        tenant = serializers.CharField(source="tenant.slug")
        email = serializers.EmailField(source="user.email")
        role = serializers.CharField()

    @extend_schema(
        operation_id="invitations_accept",
        request=InvitationAcceptInputSerializer,
        responses={201: InvitationAcceptOutputSerializer},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        data = self.InvitationAcceptInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        signed_in = request.user if isinstance(request.user, User) else None
        membership = services.invitation_accept(
            token=data.validated_data["token"],
            password=data.validated_data.get("password"),
            full_name=data.validated_data.get("full_name", ""),
            user=signed_in,
            ip=client_ip(request),
            request_id=request_id_of(request),
        )
        return Response(self.InvitationAcceptOutputSerializer(membership).data, status=status.HTTP_201_CREATED)
