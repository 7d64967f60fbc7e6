"""drf-spectacular postprocessing: the schema declares what the API really answers.

Every view can refuse a caller (401, 403), a path with parameters can name nothing (404), input can
be malformed (400, 413, 415) and a write can conflict (409); all of these answer the one error
envelope (`wire.errors.error_payload`). Declaring them here, once, keeps each view's
`extend_schema` to its happy path. Request bodies are `StrictSerializer`s, which refuse unknown
fields: their components say so (`additionalProperties: false`).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension

ERROR_COMPONENT = "Error"
PAGE_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "page",
        "in": "query",
        "required": False,
        "description": "1-based page number; past the last page is a 404.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 2_147_483_647},
    },
    {
        "name": "page_size",
        "in": "query",
        "required": False,
        "description": "Items per page (default 50, at most 200).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
    },
]
# A mailbox Django's EmailValidator accepts (ASCII; the validator takes more, the schema promises less).
EMAIL_PATTERN = (
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
NON_BLANK_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
NON_EMPTY_PATTERN = r"^[^\x00]+$"
NO_NUL_PATTERN = r"^[^\x00]*$"
SLUG_PATH_PATTERN = r"^[-a-zA-Z0-9_]+$"
STR_PATH_PATTERN = r"^[^/]+$"
_DESCRIPTIONS = {
    400: "The input is malformed or invalid; `param` names the field.",
    401: "Not authenticated: no, or an invalid, admin key or session.",
    403: "Authenticated, but not allowed (scope, role, staff only, suspended tenant, CSRF).",
    404: "Nothing by that name or id here (or not visible to the caller), or past the last page.",
    409: "The change conflicts with the current state.",
    413: "The request body is too large.",
    415: "The request body is not JSON.",
}
_WRITES = frozenset({"post", "put", "patch", "delete"})


def _error_schema() -> dict[str, Any]:
    nullable_string = {"type": "string", "nullable": True}
    return {
        "type": "object",
        "description": "The one error envelope (OpenAI's shape).",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": nullable_string,
                    "code": nullable_string,
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
    }


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _is_page(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    name = _ref_name(schema)
    target = components.get(name, {}) if name else schema
    return {"count", "next", "previous", "results"} <= set(target.get("properties", {}))


def _error_codes(method: str, path: str, operation: dict[str, Any], paginated: bool) -> set[int]:
    codes = {403}
    if operation.get("security") != [{}] and operation.get("security") != []:
        codes.add(401)
    if "{" in path or paginated:
        codes.add(404)
    if "requestBody" in operation or any(p.get("in") == "query" for p in operation.get("parameters", [])):
        codes.add(400)
    if method in _WRITES:
        codes.add(409)
    if "requestBody" in operation:
        codes |= {400, 413, 415}
    return codes


def _tighten_emails(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        if prop.get("format") == "email" and "pattern" not in prop:
            prop["pattern"] = EMAIL_PATTERN


def _tighten_parameter(parameter: dict[str, Any]) -> None:
    """What Django's path converters match: `<int:>` digits, `<slug:>` a slug, `<str:>` no slash."""
    schema = parameter.get("schema", {})
    if schema.get("format") == "email":
        schema.setdefault("pattern", EMAIL_PATTERN)
    if parameter.get("in") != "path":
        return
    if schema.get("type") == "integer":
        schema.setdefault("minimum", 0)
    elif schema.get("type") == "string":
        schema.setdefault("pattern", SLUG_PATH_PATTERN if parameter.get("name") == "slug" else STR_PATH_PATTERN)


def error_responses_hook(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: error responses, page parameters, strict request bodies."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas[ERROR_COMPONENT] = _error_schema()
    error_content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}}
    request_components: set[str] = set()
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            ok = responses.get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
            paginated = _is_page(ok, schemas)
            if paginated:
                names = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
                operation.setdefault("parameters", []).extend(
                    dict(p) for p in PAGE_PARAMETERS if p["name"] not in names
                )
            for code in sorted(_error_codes(method, path, operation, paginated)):
                responses.setdefault(str(code), {"content": error_content, "description": _DESCRIPTIONS[code]})
            for media in operation.get("requestBody", {}).get("content", {}).values():
                name = _ref_name(media.get("schema", {}))
                if name:
                    request_components.add(name)
            for parameter in operation.get("parameters", []):
                _tighten_parameter(parameter)
    for name in request_components:
        component = schemas.get(name)
        if component is not None and component.get("type") == "object":
            component.setdefault("additionalProperties", False)
            _tighten_emails(component)
    return result


class StrictCharFieldExtension(OpenApiSerializerFieldExtension):
    """A `StrictCharField` that refuses blank input says so: at least one character that is not
    whitespace (DRF trims first) and no NUL (DRF refuses it)."""

    target_class = "core.api.serializers.StrictCharField"

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> Any:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        if direction == "request" and not self.target.allow_blank:
            schema.setdefault("pattern", NON_BLANK_PATTERN if self.target.trim_whitespace else NON_EMPTY_PATTERN)
            schema.setdefault("minLength", 1)
        elif direction == "request":
            schema.setdefault("pattern", NO_NUL_PATTERN)
        return schema


class MoneyFieldExtension(OpenApiSerializerFieldExtension):
    """A `MoneyField` is never negative: its pattern has no minus sign (and at least one digit)."""

    target_class = "core.api.serializers.MoneyField"

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> Any:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        if direction == "request" and schema.get("type") == "string":
            digits = self.target.max_digits - self.target.decimal_places
            schema["pattern"] = rf"^[0-9]{{1,{digits}}}(\.[0-9]{{1,{self.target.decimal_places}}})?$"
        return schema
