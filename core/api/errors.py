"""The one error format: {"error": {"message", "type", "param", "code"}}, built by
`wire.errors.error_payload` (the envelope `/v1` and the inference node speak too).

`exception_handler` is DRF's EXCEPTION_HANDLER for every API view; `error_response` builds the
same body anywhere else (plain Django views, middleware).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from core.errors import ServiceError
from wire.errors import error_payload


def error_body(
    message: str, *, status_code: int, param: str | None = None, code: str | None = None, error_type: str | None = None
) -> dict[str, Any]:
    return error_payload(message, status_code=status_code, error_type=error_type, param=param, code=code)


def error_response(
    message: str, *, status_code: int, param: str | None = None, code: str | None = None, error_type: str | None = None
) -> JsonResponse:
    return JsonResponse(
        error_body(message, status_code=status_code, param=param, code=code, error_type=error_type), status=status_code
    )


def _first_error(detail: Any, path: tuple[str, ...] = ()) -> tuple[tuple[str, ...], str, str | None]:
    """The first (field path, message, code) of a DRF validation error, depth first."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            sub = () if field in ("non_field_errors", "__all__") else (str(field),)
            return _first_error(value, path + sub)
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                # A list of nested objects: name the item by its index.
                return _first_error(value, path + ((str(index),) if isinstance(value, dict) else ()))
            return _first_error(value, path)
    return path, str(detail), getattr(detail, "code", None)


def _validation_response(detail: Any) -> Response:
    path, message, code = _first_error(detail)
    param = ".".join(path) or None
    if param and not message.startswith(param):
        message = f"{param}: {message}"
    return Response(
        error_body(message, status_code=400, param=param, code=code or "invalid"), status=status.HTTP_400_BAD_REQUEST
    )


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Maps every error a view can raise to the one format; unknown exceptions stay 500s."""
    if isinstance(exc, ServiceError):
        set_rollback()
        return Response(
            error_body(
                exc.message, status_code=exc.status_code, param=exc.param, code=exc.code, error_type=exc.error_type
            ),
            status=exc.status_code,
        )
    if isinstance(exc, RequestDataTooBig):
        set_rollback()
        return Response(
            error_body("The request body is too large.", status_code=413, code="request_too_large"), status=413
        )
    if isinstance(exc, DjangoValidationError):
        set_rollback()
        if hasattr(exc, "error_dict"):
            return _validation_response({k: [m for e in v for m in e.messages] for k, v in exc.error_dict.items()})
        return _validation_response(exc.messages)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if not isinstance(exc, exceptions.APIException):
        return None
    set_rollback()
    if isinstance(exc, exceptions.ValidationError):
        return _validation_response(exc.detail)
    headers: dict[str, str] = {}
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = str(int(wait))
    detail = exc.detail
    if isinstance(detail, (list, dict)):
        _, message, code = _first_error(detail)
    else:
        message, code = str(detail), getattr(detail, "code", None)
    status_code = exc.status_code
    if isinstance(exc, exceptions.ParseError):
        code = "parse_error"
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        code = code if code and code != "authentication_failed" else "not_authenticated"
        # DRF answers 403 when no authenticator offers a challenge; ours always does.
        status_code = 401
        headers.setdefault("WWW-Authenticate", 'Bearer realm="api"')
    elif isinstance(exc, exceptions.NotFound):
        code = "not_found"
    elif isinstance(exc, exceptions.PermissionDenied):
        code = code if code and code != "permission_denied" else "permission_denied"
    return Response(error_body(message, status_code=status_code, code=code), status=status_code, headers=headers)
