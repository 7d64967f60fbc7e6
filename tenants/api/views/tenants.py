"""Tenants: the caller's tenants, one tenant, and the staff-only lifecycle (create, suspend,
reactivate, close)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.validators import RegexValidator
from django.db.models import OuterRef, QuerySet, Subquery
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.api.serializers import StrictCharField, StrictSerializer, page_serializer
from core.api.views import StaffAPIView
from core.audit import Actor
from tenants import selectors, services
from tenants.api.authentication import KeyPrincipal
from tenants.api.base import TenantScopedAPIView
from tenants.models import SLUG_VALIDATOR, Membership, Tenant, User


class TenantOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    slug = serializers.CharField()
    name = serializers.CharField()
    status = serializers.CharField()
    billing_email = serializers.EmailField(allow_blank=True)
    created_at = serializers.DateTimeField()
    status_changed_at = serializers.DateTimeField()
    role = serializers.CharField(allow_null=True, default=None, help_text="The caller's role; null for staff and keys.")


def _with_role(tenants: QuerySet[Tenant], user_id: int) -> QuerySet[Tenant]:
    role = Membership.objects.filter(tenant=OuterRef("pk"), user_id=user_id).values("role")[:1]
    return tenants.annotate(role=Subquery(role))


SLUG_PATTERN = SLUG_VALIDATOR.regex if isinstance(SLUG_VALIDATOR.regex, str) else SLUG_VALIDATOR.regex.pattern


@extend_schema_field({"type": "string", "pattern": SLUG_PATTERN, "maxLength": 50})
class SlugInputField(StrictCharField):
    """A strict string with the model's slug pattern, so the schema declares it and a bad slug is
    refused here already."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(RegexValidator(SLUG_VALIDATOR.regex, SLUG_VALIDATOR.message, code="invalid_slug"))


class TenantListCreateApi(StaffAPIView):
    """GET: every signed-in user or admin key; POST: platform staff."""

    class TenantCreateInputSerializer(StrictSerializer):
        slug = SlugInputField(max_length=50)
        name = StrictCharField(max_length=200)
        billing_email = serializers.EmailField(required=False, allow_blank=True, default="")
        owner_email = serializers.EmailField(required=False, help_text="Invited as the first owner.")

    class TenantCreateOutputSerializer(TenantOutputSerializer):
        owner_invitation_id = serializers.IntegerField(allow_null=True)

    def initial(self, request: Request, *args: object, **kwargs: object) -> None:
        if (request.method or "GET").upper() == "POST":
            super().initial(request, *args, **kwargs)  # staff only
        else:
            super(StaffAPIView, self).initial(request, *args, **kwargs)

    @extend_schema(operation_id="tenants_list", responses=page_serializer("TenantPage", TenantOutputSerializer))
    def get(self, request: Request) -> Response:
        user = request.user
        if isinstance(user, KeyPrincipal):
            tenants = _with_role(Tenant.objects.filter(pk=user.context.tenant_id), -1)
        elif isinstance(user, User):
            tenants = _with_role(selectors.tenant_list_for_user(user), user.pk)
        else:
            raise exceptions.NotAuthenticated()
        return self.paginated(request, tenants.order_by("slug"), TenantOutputSerializer)

    @extend_schema(
        operation_id="tenants_create",
        request=TenantCreateInputSerializer,
        responses={201: TenantCreateOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.TenantCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        tenant, invitation = services.tenant_onboard(
            slug=values["slug"],
            name=values["name"],
            billing_email=values["billing_email"],
            owner_email=values.get("owner_email") or None,
            invited_by=request.user if isinstance(request.user, User) else None,
            actor=self.actor,
        )
        tenant.role = None  # type: ignore[attr-defined]
        tenant.owner_invitation_id = invitation.pk if invitation else None  # type: ignore[attr-defined]
        return Response(self.TenantCreateOutputSerializer(tenant).data, status=status.HTTP_201_CREATED)


class TenantDetailApi(TenantScopedAPIView):
    required_scopes = {"GET": "tenant:read"}

    @extend_schema(operation_id="tenants_retrieve", responses=TenantOutputSerializer)
    def get(self, request: Request, slug: str) -> Response:
        self.tenant.role = self.membership.role if self.membership else None  # type: ignore[attr-defined]
        return Response(TenantOutputSerializer(self.tenant).data)


def _lifecycle_view(name: str, action: Callable[..., Tenant], doc: str) -> type[StaffAPIView]:
    def post(self: StaffAPIView, request: Request, slug: str) -> Response:
        self.require_empty_body(request)
        actor: Actor = self.actor
        tenant = action(tenant=selectors.tenant_get_by_slug(slug), actor=actor)
        tenant.role = None  # type: ignore[attr-defined]
        return Response(TenantOutputSerializer(tenant).data)

    post.__doc__ = doc
    decorated = extend_schema(operation_id=f"tenants_{name}", request=None, responses=TenantOutputSerializer)(post)
    return type(f"Tenant{name.title()}Api", (StaffAPIView,), {"post": decorated, "__doc__": doc})


TenantSuspendApi = _lifecycle_view("suspend", services.tenant_suspend, "Suspends a tenant: its keys stop at once.")
TenantReactivateApi = _lifecycle_view("reactivate", services.tenant_reactivate, "Reactivates a suspended tenant.")
TenantCloseApi = _lifecycle_view("close", services.tenant_close, "Closes a tenant for good; its data stays.")
