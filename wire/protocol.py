"""The `/v1` request models, OpenAI-compatible: one definition that the gateway and the node both
validate with, so a body one plane takes the other takes too.

Null and no-op values of every OpenAI field are accepted (clients serialise their defaults). A field
this platform cannot honour is refused with a 400 naming it; nothing is accepted and then ignored.
"""

from __future__ import annotations

import importlib
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from wire.shapes import RESPONSE_FORMAT_SCHEMA, TOOL_CHOICE_SCHEMA, TOOLS_SCHEMA
from wire.usage import END_USER_MAX, METADATA_MAX_KEY, METADATA_MAX_PAIRS, METADATA_MAX_VALUE

_M = TypeVar("_M", bound=BaseModel)

MAX_N = 128  # OpenAI's own bound; plans cap lower (the gateway's max_n)
MAX_TOP_LOGPROBS = 20  # chat
MAX_COMPLETION_LOGPROBS = 5  # completions
# OpenAI's metadata limits and the ledger's end-user length: one definition, the journal record's.
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE
_TOKEN_ID = re.compile(r"^[0-9]{1,9}$")
# The limits live in the types too, so the OpenAPI document states them.
TokenBias = Annotated[
    dict[Annotated[str, StringConstraints(pattern=_TOKEN_ID.pattern)], Annotated[float, Field(ge=-100, le=100)]],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": _TOKEN_ID.pattern},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        }
    ),
]


def _integral(value: Any) -> Any:
    # JSON has one number type: 16.0 is the integer 16 (JSON Schema agrees); 16.5 stays refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A token id as a prompt may carry it (16.0 too): never negative, within any vocabulary's 32-bit range.
TOKEN_ID_MAX = 2**31 - 1
TokenId = Annotated[int, Field(ge=0, le=TOKEN_ID_MAX), BeforeValidator(_integral)]
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=METADATA_KEY_CHARS)],
        Annotated[str, StringConstraints(max_length=METADATA_VALUE_CHARS)],
    ],
    Field(max_length=METADATA_PAIRS),
]


class RequestInvalid(ValueError):
    """A request body that does not validate: a 400 naming the offending field."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _unsupported(param: str, what: str) -> RequestInvalid:
    return RequestInvalid(f"'{param}' {what} is not supported.", param=param, code="unsupported_parameter")


class _Strict(BaseModel):
    # Strict: "10" is not a number and 1 is not a boolean, as in the OpenAI API. Unknown fields
    # are refused: a misspelt parameter must not silently do nothing.
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class _Message(_Strict):
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def template_dict(self) -> dict[str, Any]:
        """The message as a Hugging Face chat template takes it."""
        out: dict[str, Any] = {"role": getattr(self, "role"), "content": self.text()}  # noqa: B009
        if self.name is not None:
            out["name"] = self.name
        return out


class SystemMessage(_Message):
    role: Literal["system", "developer"]


class UserMessage(_Message):
    role: Literal["user"]


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None  # type: ignore[assignment]  # none with tool calls
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None  # as the API sent it back

    def template_dict(self) -> dict[str, Any]:
        out = super().template_dict()
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        return out


class ToolMessage(_Message):
    role: Literal["tool"]
    tool_call_id: str

    def template_dict(self) -> dict[str, Any]:
        return {**super().template_dict(), "tool_call_id": self.tool_call_id}


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # padding against side channels; none sent here


def _structure_checks(request: ChatCompletionRequest) -> None:
    """Shape checks of response_format and tools (wire.structured: both planes, no grammar library)."""
    structured: Any
    try:
        structured = importlib.import_module("wire.structured")
    except ModuleNotFoundError:  # pragma: no cover - until the module lands
        structured = None
    if structured is not None:
        structured.check_response_format(request.response_format)
        structured.check_tools(request.tools, request.tool_choice, request.parallel_tool_calls)
        return
    choice = request.tool_choice
    names = {t.get("function", {}).get("name") for t in request.tools or () if isinstance(t, dict)}
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name") not in names:
        raise RequestInvalid("'tool_choice' names a function that is not in 'tools'.", param="tool_choice")
    if choice == "required" and not names:
        raise RequestInvalid("'tool_choice' 'required' needs 'tools'.", param="tool_choice")


class _SamplingFields(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: TokenBias | None = None
    user: str | None = Field(default=None, max_length=END_USER_MAX)
    safety_identifier: str | None = Field(default=None, max_length=64)
    metadata: Metadata | None = None
    # Accepted at their no-op values only (the model is the tenant's, there is nothing to store).
    store: Literal[False] | None = None
    service_tier: Literal["auto", "default"] | None = None

    # Before the type checks, so the message names the rule rather than a regular expression.
    @field_validator("logit_bias", mode="before")
    @classmethod
    def _bias(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for key, bias in value.items():
            if not isinstance(key, str) or not _TOKEN_ID.match(key):
                raise RequestInvalid(
                    f"'logit_bias' keys must be token ids (integers as strings); got {key!r}.", param="logit_bias"
                )
            if isinstance(bias, int | float) and not isinstance(bias, bool) and not -100 <= bias <= 100:
                raise RequestInvalid(
                    f"'logit_bias' values must be between -100 and 100; token {key} has {bias}.", param="logit_bias"
                )
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        if len(value) > METADATA_PAIRS:
            raise RequestInvalid(f"'metadata' holds at most {METADATA_PAIRS} pairs.", param="metadata")
        for key, item in value.items():
            if not 1 <= len(key) <= METADATA_KEY_CHARS:
                raise RequestInvalid(f"'metadata' keys are 1 to {METADATA_KEY_CHARS} characters.", param="metadata")
            if isinstance(item, str) and len(item) > METADATA_VALUE_CHARS:
                raise RequestInvalid(
                    f"'metadata' values are at most {METADATA_VALUE_CHARS} characters (key {key!r}).", param="metadata"
                )
        return value

    @model_validator(mode="after")
    def _common(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise RequestInvalid("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
        return self

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    def choices(self) -> int:
        return self.n or 1

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        if isinstance(self.stop, str):
            return (self.stop,) if self.stop else ()
        return tuple(s for s in self.stop if s)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def token_bias(self) -> dict[int, float]:
        return {int(k): v for k, v in (self.logit_bias or {}).items()}


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # Typed loosely here: wire.structured checks their shape and names the offending path.
    response_format: Annotated[dict[str, Any] | None, WithJsonSchema(RESPONSE_FORMAT_SCHEMA)] = None
    tools: Annotated[list[dict[str, Any]] | None, WithJsonSchema(TOOLS_SCHEMA)] = None
    tool_choice: Annotated[str | dict[str, Any] | None, WithJsonSchema(TOOL_CHOICE_SCHEMA)] = None
    parallel_tool_calls: bool | None = None
    # No-op values only: this platform serves text models without audio, predictions or reasoning.
    modalities: list[Literal["text"]] | None = None
    audio: None = None
    prediction: None = None
    reasoning_effort: None = None
    verbosity: None = None
    web_search_options: None = None
    functions: None = None
    function_call: None = None

    @model_validator(mode="after")
    def _chat(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens not in (None, self.max_tokens):
            raise RequestInvalid("Give 'max_tokens' or 'max_completion_tokens', not both.", param="max_tokens")
        if self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs:
            raise RequestInvalid("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
        _structure_checks(self)
        return self

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def top_logprobs_count(self) -> int | None:
        """Alternatives per token to report; None when log-probabilities were not asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.template_dict() for m in self.messages]

    def tools_active(self) -> bool:
        """Tools the model may call: given, and not switched off by tool_choice "none"."""
        return bool(self.tools) and self.tool_choice != "none"

    def constrains_output(self) -> bool:
        """Whether decoding may follow a grammar or tool calls may come back."""
        json_format = self.response_format is not None and self.response_format.get("type") != "text"
        return json_format or self.tools_active()


class CompletionRequest(_SamplingFields):
    # One prompt: text, or token ids (several prompts in one request are not served; use n).
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=1)]
    )
    echo: bool | None = None
    # 0 with echo scores the prompt alone (its logprobs), as evaluation harnesses ask.
    max_tokens: int | None = Field(default=None, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1)
    suffix: Literal[""] | None = None  # insertion is not served

    # Before the union's type checks, whose first complaint ("a valid string") would name the wrong rule.
    @field_validator("prompt", mode="before")
    @classmethod
    def _token_ids(cls, value: Any) -> Any:
        if isinstance(value, list) and value and isinstance(value[0], list):
            ids: list[Any] = value[0]
        elif isinstance(value, list):
            ids = value
        else:
            return value
        for item in ids:
            if isinstance(item, bool) or not isinstance(item, int | float) or isinstance(item, str):
                continue  # a list of strings, or a mix: the type checks answer
            if not (float(item).is_integer() and 0 <= item <= TOKEN_ID_MAX):
                raise RequestInvalid(
                    f"'prompt' token ids are integers from 0 to {TOKEN_ID_MAX}; got {item!r}.", param="prompt"
                )
        return value

    @model_validator(mode="after")
    def _completion(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.choices():
            raise _unsupported("best_of", "other than 'n'")
        if self.max_tokens == 0 and not self.echo:
            raise RequestInvalid("'max_tokens' may be 0 only with 'echo' true.", param="max_tokens")
        return self

    def prompt_text(self) -> str | None:
        """The prompt as text, or None when it came as token ids."""
        value = self.prompt
        if isinstance(value, str):
            return value
        first = value[0]
        return first if isinstance(first, str) else None

    def prompt_token_ids(self) -> list[int] | None:
        value = self.prompt
        if isinstance(value, str) or isinstance(value[0], str):
            return None
        ids = value[0] if isinstance(value[0], list) else value
        return [int(i) for i in ids]  # type: ignore[arg-type]

    def requested_max_tokens(self) -> tuple[int | None, str]:
        # The completions API defaults to 16 tokens.
        return (16 if self.max_tokens is None else self.max_tokens), "max_tokens"

    def top_logprobs_count(self) -> int | None:
        return self.logprobs


# Fields taken at their no-op values only: any other value is a feature not served here.
_NO_OP_ONLY = frozenset({"store", "service_tier", "suffix", "modalities"})
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"})


def _param_of(loc: tuple[int | str, ...]) -> str | None:
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or not part.isidentifier() or part[0].isupper():
            pass  # a union member's or a validator's tag, not a field
        elif isinstance(previous, int) and part in ROLES:
            pass  # the message union's tag (its role)
        else:
            out += f".{part}" if out else part
        previous = part
    return out or None


def _code_of(kind: str) -> str:
    if kind == "missing":
        return "missing_required_parameter"
    if kind == "extra_forbidden":
        return "unknown_parameter"
    if kind.endswith("_type") or kind in ("none_required", "model_type", "model_attributes_type"):
        return "invalid_type"
    return "invalid_value"


def request_validate(model: type[_M], data: Any) -> _M:
    """Validate a parsed JSON body; any problem raises RequestInvalid naming the offending field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from exc


def _invalid(exc: ValidationError) -> RequestInvalid:
    errors = exc.errors()
    first = errors[0]
    if first["type"] in ("json_invalid", "json_type"):
        return RequestInvalid("the request body is not valid JSON", code="invalid_json")
    if first["type"] == "model_type" and not first["loc"]:
        return RequestInvalid("The request body must be a JSON object.", code="invalid_json")
    for error in errors:
        raised = (error.get("ctx") or {}).get("error")
        if isinstance(raised, RequestInvalid):
            # A validator named the field relative to its model: prefix the path to that model.
            where = _param_of(error["loc"])
            param = raised.param
            if where and param and not param.startswith(where):
                param = f"{where}.{param}"
            elif where and not param:
                param = where
            return RequestInvalid(raised.message, param=param, code=raised.code or "invalid_value")
    for error in errors:
        loc = [str(part) for part in error["loc"]]
        if error["type"] == "literal_error" and "content" in loc and loc[-1] == "type":
            # A content part of a kind this platform does not serve (images, audio, files).
            return RequestInvalid(
                "Only text content parts are supported.", param=_param_of(error["loc"]), code="unsupported_content"
            )
    param = _param_of(first["loc"])
    kind = first["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # The message union's discriminator: name the field itself.
        param = f"{param}.role" if param else "role"
        if kind == "union_tag_not_found":
            return RequestInvalid(f"'{param}' is a required property.", param=param, code="missing_required_parameter")
        return RequestInvalid(f"{param}: must be one of {', '.join(sorted(ROLES))}.", param=param, code="invalid_value")
    if kind == "extra_forbidden":
        return RequestInvalid(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if kind == "none_required" or (kind == "literal_error" and param in _NO_OP_ONLY):
        # A field accepted only at its no-op value (null) got a real one.
        return RequestInvalid(f"'{param}' is not supported.", param=param, code="unsupported_parameter")
    if kind == "missing":
        return RequestInvalid(f"'{param}' is a required property.", param=param, code="missing_required_parameter")
    message = first["msg"]
    if param:
        message = f"{param}: {message}"
    return RequestInvalid(message, param=param, code=_code_of(kind))


def parse_body(model: type[_M], body: bytes) -> _M:
    """Validate a JSON body; any problem raises RequestInvalid naming the offending field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
