"""The one error envelope, OpenAI's shape, spoken by the node, `/v1` and the management API."""

from __future__ import annotations

from typing import Any

# HTTP status → error type, for errors that do not name their own.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for(status_code: int) -> str:
    return ERROR_TYPES.get(status_code, "api_error")


def error_payload(
    message: str, *, status_code: int, error_type: str | None = None, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`; the type follows the status unless named."""
    return {
        "error": {
            "message": message,
            "type": error_type or error_type_for(status_code),
            "param": param,
            "code": code,
        }
    }
