"""Errors that services raise; the API's exception handler turns them into the one error body.

Missing rows and rows of another tenant raise `NotFound` (they look the same).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refused operation: a message for people, a stable code for programs."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param


class ValidationFailed(ServiceError):
    """The input is wrong (400)."""


class PermissionRefused(ServiceError):
    """The caller may not do this (403)."""

    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class Conflict(ServiceError):
    """The operation clashes with the current state (409): already a member, last owner, ..."""

    status_code = 409
    error_type = "conflict_error"
    default_code = "conflict"


class NotFound(ServiceError):
    """No such row for this caller (404). A row of another tenant raises this too: the two look
    the same from outside."""

    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"

    def __init__(self, message: str = "Not found.", *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)
