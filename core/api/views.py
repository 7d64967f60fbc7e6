"""Base views of the management API that need no tenant: JSON only, bounded bodies, the one error
format, the audit actor of the caller. `tenants.api.base.TenantScopedAPIView` builds on these."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import QuerySet
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.pagination import Pagination
from core.api.parsers import LimitedJSONParser
from core.api.serializers import StrictSerializer
from core.audit import Actor, actor_for

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@runtime_checkable
class KeyPrincipalLike(Protocol):
    """A `request.user` that is an API key rather than a person (`tenants.api.authentication.KeyPrincipal`).

    A protocol, so that `core` need not import the app that authenticates keys.
    """

    @property
    def key_id(self) -> int: ...

    @property
    def actor_label(self) -> str: ...


def request_actor(request: Request) -> Actor:
    """The audit actor of whoever sent `request`: a key, a signed-in person, or anonymous."""
    user = request.user
    if isinstance(user, KeyPrincipalLike):
        return actor_for(request, key_id=user.key_id, label=user.actor_label)
    if user is not None and getattr(user, "is_authenticated", False):
        return actor_for(request, user_id=user.pk, label=getattr(user, "email", "") or str(user))
    return actor_for(request, label="anonymous")


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
        return request_actor(request)

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

    actor: Actor

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if not getattr(request.user, "is_staff", False) or isinstance(request.user, KeyPrincipalLike):
            raise exceptions.PermissionDenied("Platform staff only.")
        self.actor = self.session_actor(request)
