"""Who a request is for, as the client tells us: `user` or OpenAI's newer `safety_identifier` (the
end user) and `metadata` (the client's own tags). Both planes read them by this one model; the node
journals them and the ledger groups and filters spend by them.

OpenAI's limits: at most 16 metadata pairs, keys up to 64 characters, values up to 512, strings only.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from wire.protocol import RequestInvalid
from wire.usage import END_USER_MAX, METADATA_MAX_KEY, METADATA_MAX_PAIRS, METADATA_MAX_VALUE


class Attribution(BaseModel):
    """The attribution fields of a /v1 body; a base for the request models that carry them."""

    model_config = ConfigDict(strict=True, extra="ignore")

    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("user", "safety_identifier")
    @classmethod
    def _end_user_length(cls, value: str | None) -> str | None:
        if value is not None and len(value) > END_USER_MAX:
            raise PydanticCustomError("too_long", "must be at most {limit} characters", {"limit": END_USER_MAX})
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > METADATA_MAX_PAIRS:
            raise PydanticCustomError(
                "too_many",
                "may hold at most {limit} pairs (got {count})",
                {"limit": METADATA_MAX_PAIRS, "count": len(value)},
            )
        for key, item in value.items():
            if not key or len(key) > METADATA_MAX_KEY:
                raise PydanticCustomError(
                    "bad_key",
                    "keys must be 1 to {limit} characters ('{key}' is not)",
                    {"limit": METADATA_MAX_KEY, "key": key[:80]},
                )
            if len(item) > METADATA_MAX_VALUE:
                raise PydanticCustomError(
                    "too_long",
                    "the value of '{key}' is longer than {limit} characters",
                    {"limit": METADATA_MAX_VALUE, "key": key},
                )
        return value

    def end_user(self) -> str:
        """The end user to attribute spend to: `safety_identifier` wins over `user`."""
        return self.safety_identifier or self.user or ""

    def tags(self) -> dict[str, str]:
        return dict(self.metadata or {})


def attribution_parse(body: bytes | dict[str, Any]) -> Attribution:
    """The attribution fields of a request body (raw JSON or already parsed); RequestInvalid names a bad one."""
    try:
        data = orjson.loads(body) if isinstance(body, bytes | bytearray) else body
    except orjson.JSONDecodeError as exc:
        raise RequestInvalid("the request body is not valid JSON", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise RequestInvalid("the request body must be a JSON object", code="invalid_json")
    fields = {name: data[name] for name in ("user", "safety_identifier", "metadata") if name in data}
    try:
        return Attribution.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        raise RequestInvalid(f"{param}: {first['msg']}", param=param, code="invalid_value") from exc
