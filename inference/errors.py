"""The node's error: raised anywhere in a request, answered in the one envelope (`wire.errors`)."""

from __future__ import annotations

from typing import Any

from wire.errors import error_payload


class APIError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}}."""

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
