"""The engine interface: an async token stream per request, abort, capacity and health."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "aborted", "error"]


class TokenConstraint(Protocol):
    """Grammar state of one generated sequence (inference.structured makes them); not thread-safe."""

    def allowed_mask(self) -> Any:
        """A bool tensor [vocab] of the tokens allowed next, or None when any token is."""

    def advance(self, token_id: int) -> None: ...

    def is_finished(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: Alternatives to report per generated token (0 = only the chosen one); None = no logprobs.
    logprobs: int | None = None
    #: Alternatives to report per prompt token (completions with echo); None = none.
    prompt_logprobs: int | None = None
    #: Makes one constraint per sequence; None when decoding is free.
    constraint: Callable[[], TokenConstraint] | None = None
    #: The structured-output request as vLLM takes it (GuidedDecodingParams keywords), if any.
    guided: dict[str, Any] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token's log-probability and the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: int = 0


@dataclass(slots=True)
class EngineOutput:
    """One step of one sequence of a request: the text and tokens it added, and whether it is done.

    A request with n sequences streams outputs for indexes 0..n-1; its stream ends when every
    sequence has finished, or at one output with index -1 (the whole request aborted or failed).
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    error: str | None = None
    engine_ms: float = 0.0  # the request's share of engine step time so far (accounting.py)
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    #: On a sequence's first output when asked for: the prompt's tokens (the first has no logprob).
    prompt_logprobs: list[TokenLogprob | None] | None = None


class EngineError(Exception):
    """The engine could not serve a request it accepted."""


class Engine(abc.ABC):
    """What the scheduler and the serving layer need from an engine, whatever runs underneath."""

    #: Most requests the engine runs at once; the scheduler never hands it more.
    max_batch_size: int
    #: Most tokens (prompt + completion) one sequence may hold.
    context_length: int

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream outputs; stopping iteration early aborts the request."""

    @abc.abstractmethod
    def abort(self, request_id: str) -> None: ...

    @abc.abstractmethod
    def healthy(self) -> bool: ...

    @abc.abstractmethod
    def running(self) -> int:
        """Requests currently in the running batch."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """The chat prompt; `tools` (OpenAI's shape) go to the chat template."""

    #: Tokens the model knows (for logit_bias checks); 0 when unknown.
    vocab_size: int = 0

    def token_text(self, token_id: int) -> str:
        """One token's text as logprobs report it."""
        return str(token_id)

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer, for grammar compilation; None when the engine has none."""
        return None


class _Tokenizer(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas and finds stop sequences.

    Decodes a short window (as text-generation-inference does) so each step costs O(1), and holds
    back text that might be the start of a stop sequence or an unfinished multi-byte character.
    """

    __slots__ = ("_emitted", "_ids", "_prefix", "_read", "_stop", "_text", "_tokenizer", "stopped")

    def __init__(self, tokenizer: _Tokenizer, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._text = ""  # all text decoded so far
        self._emitted = 0  # characters of _text already handed out
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Add one token; return the new text that is safe to send now."""
        self._ids.append(token_id)
        prefix_text = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        new_text = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._text += new_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._ids)
        if self._stop:
            start = max(0, self._emitted - max(len(s) for s in self._stop))
            cut = -1
            for s in self._stop:
                pos = self._text.find(s, start)
                if pos != -1 and (cut == -1 or pos < cut):
                    cut = pos
            if cut != -1:
                self.stopped = True
                self._text = self._text[:cut]
                delta = self._text[self._emitted :]
                self._emitted = len(self._text)
                return delta
            # Hold back a tail that could still become a stop sequence.
            hold = 0
            for s in self._stop:
                for k in range(min(len(s) - 1, len(self._text)), 0, -1):
                    if self._text.endswith(s[:k]):
                        hold = max(hold, k)
                        break
            safe = len(self._text) - hold
        else:
            safe = len(self._text)
        if safe <= self._emitted:
            return ""
        delta = self._text[self._emitted : safe]
        self._emitted = safe
        return delta

    def flush(self) -> str:
        """Text held back, sent when the request ends without a stop sequence."""
        if self.stopped:
            return ""
        rest = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=True)
        prefix_text = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        if len(rest) > len(prefix_text):
            self._text += rest[len(prefix_text) :]
            self._prefix = self._read = len(self._ids)
        delta = self._text[self._emitted :]
        self._emitted = len(self._text)
        return delta
