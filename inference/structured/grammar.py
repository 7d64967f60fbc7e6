"""Grammar-constrained decoding with llguidance: JSON output, JSON-schema output and forced tool calls.

A request's constraint is compiled once (`structure_for`, a `Structure` holding a checked matcher);
each generated sequence gets its own copy (`Structure.new_constraint`). Per step the engine asks
for the allowed tokens, a bit mask llguidance fills in place, unpacked to a bool tensor.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import llguidance
import llguidance.hf
import numpy as np

from inference.structured.tools import CALL_PREFIX, CALL_SEPARATOR, CALL_SUFFIX, tool_names
from wire.protocol import RequestInvalid

if TYPE_CHECKING:
    import torch

# Compact JSON: no whitespace between tokens, so a model that likes spaces cannot pad forever.
_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


class TokenConstraint(Protocol):
    """One per generated sequence; not thread-safe."""

    def allowed_mask(self) -> torch.Tensor | None: ...
    def advance(self, token_id: int) -> None: ...
    def is_finished(self) -> bool: ...


_tokenizers: dict[int, tuple[Any, llguidance.LLTokenizer]] = {}
COMPILED_CACHE_SIZE = 256
_compiled: OrderedDict[str, Structure] = OrderedDict()
_compiled_lock = threading.Lock()
_tokenizers_lock = threading.Lock()


def ll_tokenizer(tokenizer: Any, vocab_size: int | None = None) -> llguidance.LLTokenizer:
    """llguidance's view of a Hugging Face fast tokenizer, built once per tokenizer (it costs ~1 s
    on large vocabularies)."""
    key = id(tokenizer)
    with _tokenizers_lock:
        cached = _tokenizers.get(key)
        # Keep the tokenizer itself in the entry, so its id cannot be reused by another object.
        if cached is None or cached[0] is not tokenizer or (vocab_size and cached[1].vocab_size != vocab_size):
            built = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
            _tokenizers[key] = (tokenizer, built)
            return built
        return cached[1]


# Bits of each byte value, least significant first: bytes of the bit mask -> bools, by one lookup.
BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(np.bool_)


class GrammarConstraint:
    """A TokenConstraint over one llguidance matcher."""

    __slots__ = ("_bytes", "_eos_only", "_failed", "_matcher", "_ptr", "_size", "_vocab", "_words")

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eos: int) -> None:
        import torch

        self._matcher = matcher
        self._vocab = vocab_size
        # Preallocated: llguidance writes the bits straight into this buffer every step.
        self._words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._bytes = self._words.view(np.uint8)
        self._ptr = int(self._words.ctypes.data)
        self._size = int(self._words.nbytes)
        self._failed = bool(matcher.is_error())
        self._eos_only = torch.zeros(vocab_size, dtype=torch.bool)
        self._eos_only[eos] = True

    def allowed_mask(self) -> torch.Tensor:
        import torch

        if self._failed:
            # Cannot happen while the engine respects the mask; end the sequence rather than guess.
            return self._eos_only
        self._matcher.unsafe_compute_mask_ptr(self._ptr, self._size)
        return torch.from_numpy(BYTE_BITS[self._bytes].reshape(-1)[: self._vocab])

    def advance(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id):
            self._failed = True

    def is_finished(self) -> bool:
        # Stopped: nothing but end-of-sequence can follow (or the matcher failed).
        return self._failed or bool(self._matcher.is_stopped())

    def matcher_for_batch(self) -> llguidance.LLMatcher | None:
        """The matcher, for BatchMasker to fill this row's mask with the others; None once failed."""
        return None if self._failed else self._matcher

    @property
    def error(self) -> str:
        return str(self._matcher.get_error())


@dataclass(frozen=True)
class Structure:
    """What one request asks of its output, compiled and checked once."""

    grammar: str  # llguidance grammar (JSON), for the torch engine
    tool_mode: bool  # output is tool call(s) in the template's format
    vllm: dict[str, Any]  # StructuredOutputsParams(**vllm) on a vLLM node
    vocab_size: int
    eos: int
    _prototype: llguidance.LLMatcher | None = field(repr=False, compare=False)

    def new_constraint(self) -> GrammarConstraint:
        if self._prototype is None:
            raise RuntimeError("compiled without a tokenizer: only vllm_params() is available")
        return GrammarConstraint(self._prototype.deep_copy(), self.vocab_size, self.eos)

    def vllm_params(self) -> dict[str, Any]:
        return dict(self.vllm)


def _dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _schema_grammar(schema: Any, *, strict: bool, param: str, tokenizer: llguidance.LLTokenizer | None) -> str:
    # strict: every keyword must be honoured (an unsupported one is a 400, as with OpenAI's strict
    # mode); otherwise keywords llguidance does not implement are ignored.
    options = {**_JSON_OPTIONS, "lenient": not strict}
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=options)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise RequestInvalid(f"{param}: the JSON schema is not valid: {exc}", param=param) from exc
    error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
    if error:
        raise RequestInvalid(f"{param}: the JSON schema cannot be used: {error}", param=param)
    return grammar


_ARGS_DEF = "mm_arguments"


def _rebase_refs(node: Any) -> Any:
    """References into the parameters schema, re-pointed after it moves under the call's $defs."""
    if isinstance(node, dict):
        out = {k: _rebase_refs(v) for k, v in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#") and not ref.startswith(("#/$defs/", "#/definitions/")):
            out["$ref"] = f"#/$defs/{_ARGS_DEF}" + ref[1:]
        return out
    if isinstance(node, list):
        return [_rebase_refs(v) for v in node]
    return node


def _call_schema(name: str, parameters: Any, strict: bool) -> dict[str, Any]:
    """{"name": <const>, "arguments": <parameters>} as one schema. The parameters' own $defs (and
    definitions) move to the root, where their "#/$defs/..." references resolve."""
    params = _rebase_refs(parameters) if isinstance(parameters, dict) else parameters
    defs: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    if isinstance(params, dict):
        params = dict(params)
        defs.update(params.pop("$defs", None) or {})
        definitions.update(params.pop("definitions", None) or {})
    defs[_ARGS_DEF] = params
    schema: dict[str, Any] = {
        "$defs": defs,
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": {"$ref": f"#/$defs/{_ARGS_DEF}"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        "x-guidance": {**_JSON_OPTIONS, "lenient": not strict},
    }
    if definitions:
        schema["definitions"] = definitions
    return schema


def _lark_literal(text: str) -> str:
    return json.dumps(text)


def _tools_lark(
    tools: Sequence[dict[str, Any]], only: str | None, parallel: bool, tokenizer: llguidance.LLTokenizer | None
) -> str:
    """A Lark grammar for one call (or several, newline-separated) in the template's format."""
    rules: list[str] = []
    alternatives: list[str] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") or {}
        name = function.get("name")
        if only is not None and name != only:
            continue
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        strict = bool(function.get("strict"))
        # Compiled alone first, so a bad schema is reported against its own tool.
        _schema_grammar(parameters, strict=strict, param=f"tools[{i}].function.parameters", tokenizer=tokenizer)
        rules.append(f"fn_{i}: %json {json.dumps(_call_schema(str(name), parameters, strict))}")
        alternatives.append(f"fn_{i}")
    call = f"call: {_lark_literal(CALL_PREFIX)} ({' | '.join(alternatives)}) {_lark_literal(CALL_SUFFIX)}"
    start = f"start: call ({_lark_literal(CALL_SEPARATOR)} call)*" if parallel else "start: call"
    return "\n".join([start, call, *rules]) + "\n"


def _forced_tool(tools: Sequence[dict[str, Any]], tool_choice: Any) -> tuple[bool, str | None]:
    """(a call is forced, the one function it must be: None for any)."""
    if not tools or tool_choice in (None, "none", "auto"):
        return False, None
    if tool_choice == "required":
        return True, None
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name not in tool_names(tools):
            raise RequestInvalid(f"tool_choice: no function named {name!r} in tools", param="tool_choice")
        return True, str(name)
    raise RequestInvalid("tool_choice: must be 'none', 'auto', 'required' or a named function", param="tool_choice")


def structure_for(
    *,
    response_format: Any,
    tools: Any,
    tool_choice: Any,
    parallel_tool_calls: bool | None,
    tokenizer: Any,
    vocab_size: int | None = None,
) -> Structure | None:
    """Compile what a chat request asks of its output; None when decoding is free.

    Raises RequestInvalid naming the field when the grammar library cannot compile a schema.
    """
    response_format = _dump(response_format)
    tools = _dump(tools) or []
    tool_choice = _dump(tool_choice)
    forced, only = _forced_tool(tools, tool_choice)
    kind = (response_format or {}).get("type", "text") if isinstance(response_format, dict) else "text"
    if not forced and kind == "text":
        return None
    ll_tok = None
    if tokenizer is not None:  # None: a vLLM node, which only needs the grammar passed through
        try:
            ll_tok = ll_tokenizer(tokenizer, vocab_size)
        except (ValueError, TypeError) as exc:  # a slow (Python) tokenizer: llguidance needs a fast one
            param = "tools" if forced else "response_format"
            message = f"{param}: structured outputs are not available for this model ({exc})"
            raise RequestInvalid(message, param=param) from exc
    # Agents send the same tools and schemas turn after turn: compile each once (a structure is
    # immutable; every sequence deep-copies its matcher).
    key = json.dumps(
        [None if ll_tok is None else id(ll_tok), None if forced else response_format, tools if forced else None,
         only, parallel_tool_calls is not False if forced else None],
        sort_keys=True, default=str,
    )  # fmt: skip
    with _compiled_lock:
        cached = _compiled.get(key)
        if cached is not None:
            _compiled.move_to_end(key)
            return cached
    built = _compile(response_format, tools, forced, only, parallel_tool_calls, kind, ll_tok, tokenizer)
    with _compiled_lock:
        _compiled[key] = built
        while len(_compiled) > COMPILED_CACHE_SIZE:
            _compiled.popitem(last=False)
    return built


def _compile(
    response_format: Any,
    tools: list[dict[str, Any]],
    forced: bool,
    only: str | None,
    parallel_tool_calls: bool | None,
    kind: str,
    ll_tok: llguidance.LLTokenizer | None,
    tokenizer: Any,
) -> Structure:
    if forced:
        lark = _tools_lark(tools, only, parallel_tool_calls is not False, ll_tok)
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        vllm: dict[str, Any] = {"grammar": lark}
        param = "tools"
    elif kind == "json_object":
        grammar = _schema_grammar({"type": "object"}, strict=True, param="response_format", tokenizer=ll_tok)
        vllm = {"json_object": True}
        param = "response_format"
    elif kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") or {"type": "object"}
        param = "response_format.json_schema.schema"
        grammar = _schema_grammar(schema, strict=bool(spec.get("strict")), param=param, tokenizer=ll_tok)
        vllm = {"json": schema}
    else:
        raise RequestInvalid(
            f"response_format.type: {kind!r} is not one of 'text', 'json_object', 'json_schema'",
            param="response_format.type",
        )
    if ll_tok is None:
        error = llguidance.LLMatcher.validate_grammar(grammar)
        if error:
            raise RequestInvalid(f"{param}: cannot be compiled: {error}", param=param)
        return Structure(grammar=grammar, tool_mode=forced, vllm=vllm, vocab_size=0, eos=-1, _prototype=None)
    matcher = llguidance.LLMatcher(ll_tok, grammar, log_level=0)
    if matcher.is_error():
        raise RequestInvalid(f"{param}: cannot be compiled: {matcher.get_error()}", param=param)
    eos = tokenizer.eos_token_id
    return Structure(
        grammar=grammar,
        tool_mode=forced,
        vllm=vllm,
        vocab_size=int(ll_tok.vocab_size),
        eos=int(eos if eos is not None else ll_tok.eos_token),
        _prototype=matcher,
    )
