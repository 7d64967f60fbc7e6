"""Who a request is for, as the client tells us: `user` or OpenAI's newer `safety_identifier` (the
end user) and `metadata` (the client's own tags). Both planes read them by this one model; the node
journals them and the ledger groups and filters spend by them.

OpenAI's limits: at most 16 metadata pairs, keys up to 64 characters, values up to 512, strings only;
`safety_identifier` up to 64 characters. `user` up to 256 (what the ledger holds).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wire.protocol import RequestInvalid
from wire.usage import END_USER_MAX, METADATA_MAX_KEY, METADATA_MAX_PAIRS, METADATA_MAX_VALUE

SAFETY_IDENTIFIER_MAX = 64  # OpenAI's limit


class Attribution(BaseModel):
    """The attribution fields of a /v1 body; a base for the request models that carry them."""

    model_config = ConfigDict(strict=True, extra="ignore")

    user: str | None = Field(default=None, max_length=END_USER_MAX)
    safety_identifier: str | None = Field(default=None, max_length=SAFETY_IDENTIFIER_MAX)
    metadata: (
        Annotated[
            dict[
                Annotated[str, Field(min_length=1, max_length=METADATA_MAX_KEY)],
                Annotated[str, Field(max_length=METADATA_MAX_VALUE)],
            ],
            Field(max_length=METADATA_MAX_PAIRS),
        ]
        | None
    ) = None

    def end_user(self) -> str:
        """The end user to attribute spend to: `safety_identifier` wins over `user`."""
        return self.safety_identifier or self.user or ""

    def tags(self) -> dict[str, str]:
        return dict(self.metadata or {})


_LOC_NOISE = ("function-", "list[", "dict[", "nullable[")


def validation_invalid(exc: ValidationError) -> RequestInvalid:
    """The first error of a request body as a 400: `param` is the field (`metadata` for any of its
    keys or values, whose names are the client's own)."""
    first = exc.errors()[0]
    if first["type"] in ("json_invalid", "json_type"):
        return RequestInvalid("the request body is not valid JSON", code="invalid_json")
    # Union members and validators name themselves in `loc` ("str", "list[int]", "function-after[...]").
    loc = [str(p) for p in first["loc"] if str(p) not in ("str", "int") and not str(p).startswith(_LOC_NOISE)]
    detail = first["msg"]
    if loc and loc[0] == "metadata" and len(loc) > 1:
        detail = f"{detail} (key {loc[1][:70]!r})"
        loc = loc[:1]
    param = ".".join(loc) or None
    message = f"{param}: {detail}" if param else detail
    return RequestInvalid(message, param=param, code="invalid_value" if loc else None)


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
        raise validation_invalid(exc) from exc
