"""Base views of the management API.

`TenantScopedAPIView` is the one door to tenant data: it resolves `<slug>`, authenticates a
session or an admin key, checks `required_scopes[method]` against the permission table and
sets `self.tenant`, `self.actor`, `self.membership`, `self.scopes`. Subclass it:

    class UsageListApi(TenantScopedAPIView):
        required_scopes = {"GET": "usage:read"}

        def get(self, request: Request, slug: str) -> Response:
            rows = usage_list(tenant=self.tenant)  # always filter by self.tenant
            ...

A member of another tenant, an admin key of another tenant and a missing tenant all get the
same 404. Authenticated but lacking the scope: 403. Not authenticated: 401.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import QuerySet
from django.http import Http404
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.audit import Actor
from tenants import selectors
from tenants.api.authentication import KeyPrincipal
from tenants.api.pagination import Pagination
from tenants.api.parsers import LimitedJSONParser
from tenants.api.serializers import StrictSerializer
from tenants.models import Membership, Tenant, TenantStatus, User
from tenants.permissions import KEY_MANAGER_ROLES, STAFF_SCOPES, Role, scopes_for_role
from tenants.types import KeyContext

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def client_ip(request: Request) -> str | None:
    # The proxy in front (ingress) sets REMOTE_ADDR through the server's proxy-headers handling.
    return request.META.get("REMOTE_ADDR") or None


def request_id(request: Request) -> str:
    return str(getattr(request._request, "request_id", "") or "")


class PlatformAPIView(APIView):
    """Any management API view: JSON only, bounded bodies, the one error format."""

    parser_classes = [LimitedJSONParser]
    permission_classes: list[type[BasePermission]] = [IsAuthenticated]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.check_body_size(request)
        super().initial(request, *args, **kwargs)

    @staticmethod
    def check_body_size(request: Request) -> None:
        """Refuses a declared oversized body before anything reads it."""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError as exc:
            raise exceptions.ParseError("Invalid Content-Length header.") from exc
        if limit is not None and length > limit:
            raise RequestDataTooBig("The request body is too large.")

    @staticmethod
    def require_empty_body(request: Request) -> None:
        """For actions that take no input: an empty body or {} only."""
        StrictSerializer(data=request.data).is_valid(raise_exception=True)

    def session_actor(self, request: Request) -> Actor:
        user = request.user
        if isinstance(user, KeyPrincipal):
            return Actor(
                key_id=user.context.key_id,
                label=user.context.label or f"key {user.context.key_id}",
                ip=client_ip(request),
                request_id=request_id(request),
            )
        if isinstance(user, User) and user.is_authenticated:
            return Actor(user_id=user.pk, label=user.email, ip=client_ip(request), request_id=request_id(request))
        return Actor(label="anonymous", ip=client_ip(request), request_id=request_id(request))

    def paginated(
        self, request: Request, queryset: QuerySet[Any], serializer: type[serializers.BaseSerializer[Any]]
    ) -> Response:
        """One page of `queryset` (which the caller already filtered by tenant)."""
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, request, view=self) or []
        return paginator.get_paginated_response(serializer(page, many=True).data)


class PublicAPIView(PlatformAPIView):
    """No authentication needed (the invitation token is the credential)."""

    permission_classes = [AllowAny]
    # A signed-in user is recognised (and CSRF-checked); anonymous callers pass.
    authentication_classes: list[type[BaseAuthentication]] = [SessionAuthentication]


class StaffAPIView(PlatformAPIView):
    """Platform staff signed in with a session only."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if not getattr(request.user, "is_staff", False) or isinstance(request.user, KeyPrincipal):
            raise exceptions.PermissionDenied("Platform staff only.")
        self.actor = self.session_actor(request)


class TenantScopedAPIView(PlatformAPIView):
    """Resolves the tenant and checks the caller's scope; see the module docstring."""

    # HTTP method → scope it needs; a method missing here is refused with 403.
    required_scopes: dict[str, str] = {}

    tenant: Tenant
    actor: Actor
    membership: Membership | None
    scopes: frozenset[str]
    key_context: KeyContext | None
    is_staff: bool
    # The role the caller acts with: a member's role, an admin key's creator's; None for staff.
    acting_role: Role | None
    # The user on whose behalf the caller acts (a session's user, a key's creator).
    acting_user_id: int | None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.resolve_tenant(request, kwargs.get("slug", ""))
        self.check_scope(request)

    def resolve_tenant(self, request: Request, slug: str) -> None:
        tenant = selectors.tenant_get_by_slug(slug)
        user = request.user
        self.key_context = None
        self.membership = None
        self.is_staff = False
        if isinstance(user, KeyPrincipal):
            context = user.context
            if context.tenant_id != tenant.pk:
                raise Http404("No such tenant.")
            self.key_context = context
            self.acting_user_id = context.created_by_id
            self.acting_role, cap = self._creator_role(tenant, context.created_by_id)
            # A key never does more than its creator may do now: a demoted creator's keys shrink,
            # a removed creator's keys hold nothing.
            self.scopes = context.scopes if cap is None else context.scopes & cap
        elif isinstance(user, User) and user.is_staff:
            self.is_staff = True
            self.scopes = STAFF_SCOPES
            self.acting_role = None
            self.acting_user_id = user.pk
            self.membership = selectors.membership_get(tenant=tenant, user=user)
        elif isinstance(user, User):
            membership = selectors.membership_get(tenant=tenant, user=user)
            if membership is None or tenant.status == TenantStatus.CLOSED:
                raise Http404("No such tenant.")
            self.membership = membership
            self.scopes = scopes_for_role(membership.role)
            self.acting_role = Role(membership.role)
            self.acting_user_id = user.pk
        else:
            raise exceptions.NotAuthenticated()
        self.tenant = tenant
        self.actor = self.session_actor(request)
        if (
            tenant.status != TenantStatus.ACTIVE
            and not self.is_staff
            and (request.method or "GET").upper() not in SAFE_METHODS
        ):
            raise exceptions.PermissionDenied(
                f"The tenant is {tenant.status}; it is read-only.", code="tenant_suspended"
            )

    @staticmethod
    def _creator_role(tenant: Tenant, user_id: int | None) -> tuple[Role | None, frozenset[str] | None]:
        """The role an admin key acts with and the cap on its scopes (None: no cap, staff)."""
        if user_id is None:
            return None, None  # created by the platform (staff tooling, seeding)
        membership = selectors.membership_get(tenant=tenant, user=user_id)
        if User.objects.filter(pk=user_id, is_staff=True).exists():
            return None, None
        if membership is None:
            return Role.VIEWER, frozenset()
        return Role(membership.role), scopes_for_role(membership.role)

    def check_scope(self, request: Request) -> None:
        method = (request.method or "GET").upper()
        if method in ("HEAD", "OPTIONS"):
            method = "GET"
        if not hasattr(self, method.lower()):
            raise exceptions.MethodNotAllowed(method)
        scope = self.required_scopes.get(method)
        if scope is None or scope not in self.scopes:
            raise exceptions.PermissionDenied(f"This needs the {scope or 'unknown'} scope.")

    @property
    def manages_all_keys(self) -> bool:
        """Owners, admins and staff manage every key; other roles only their own."""
        return self.acting_role is None or self.acting_role in KEY_MANAGER_ROLES
