"""The engine interface: an async token stream per request, abort, capacity and health."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "aborted", "error"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: int = 0


@dataclass(slots=True)
class EngineOutput:
    """One step of one request: the text and tokens it added, and whether it is done."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    error: str | None = None
    engine_ms: float = 0.0  # the request's share of engine step time so far (accounting.py)


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
    def encode_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]: ...


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
