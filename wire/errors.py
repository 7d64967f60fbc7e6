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


class APIError(Exception):
    """An error raised anywhere in a request and answered in the envelope, by either plane."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_payload(
            self.message, status_code=self.status, error_type=self.type, param=self.param, code=self.code
        )
