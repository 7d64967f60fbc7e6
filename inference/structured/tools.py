"""Tool calls in model text: the demo template's format, parsing and OpenAI streaming deltas.

The format is the one Hermes and Qwen models use, and the demo chat template renders::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call, blocks separated by a newline. The same state machine serves streaming
(`ToolCallStream`) and whole responses (`parse_tool_calls`), so both always agree.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# What the grammar and the template put around the JSON of one call, and between calls.
CALL_PREFIX = TOOL_CALL_OPEN + "\n"
CALL_SUFFIX = "\n" + TOOL_CALL_CLOSE
CALL_SEPARATOR = "\n"

# `{"name": "...", "arguments": ` — the part of a call that is known before its arguments stream.
# (Complete only once the first character of the arguments is there, so no whitespace leaks in.)
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
# A head can still turn out not to match while it is shorter than this (a long name is rare).
_HEAD_PATIENCE = 400

_TEXT, _HEAD_STATE, _ARGS, _REJECTED = range(4)


def tool_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def tool_names(tools: Sequence[dict[str, Any]] | None) -> list[str]:
    return [str(t.get("function", {}).get("name")) for t in tools or () if isinstance(t, dict)]


def _held_prefix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ToolCallStream:
    """Turns text deltas of a chat completion into OpenAI `delta` dicts.

    Text outside `<tool_call>` blocks becomes `{"content": ...}`; each call becomes a first delta
    with `index`, `id`, `type`, `function.name` and empty `arguments`, then argument fragments
    (`{"tool_calls": [{"index": i, "function": {"arguments": "..."}}]}`), as OpenAI streams them.
    A block naming an unknown function, or one that is not a call at all, stays content.
    `max_calls` (1 when `parallel_tool_calls` is false) drops calls beyond it.
    """

    def __init__(self, tools: Sequence[dict[str, Any]] | None, *, max_calls: int | None = None) -> None:
        self._names = set(tool_names(tools))
        self._max_calls = max_calls
        self._state = _TEXT
        self._buf = ""  # text of the current state not yet handed out
        self._sent = 0  # characters of _buf (arguments) already sent
        self._calls = 0
        self._suppress = False  # the current call is beyond max_calls
        self._after_call = False  # a call just closed: a separator may follow
        self.saw_tool_call = False

    # -- public ----------------------------------------------------------------------------------

    def feed(self, text: str) -> list[dict[str, Any]]:
        self._buf += text
        out: list[dict[str, Any]] = []
        while self._step(out):
            pass
        return _merge_content(out)

    def finish(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while self._step(out):
            pass
        if self._state == _TEXT:
            self._content(out, self._buf)
        elif self._state == _HEAD_STATE and self.saw_tool_call:
            pass  # the cut start of one more call (max_tokens): not content, and nothing to call
        elif self._state in (_HEAD_STATE, _REJECTED):
            self._content(out, TOOL_CALL_OPEN + self._buf)
        elif self._state == _ARGS:
            # Cut short (max_tokens): send what there is, as OpenAI does with finish_reason "length".
            self._args(out, self._buf[self._sent :])
        self._buf, self._state = "", _TEXT
        return _merge_content(out)

    # -- state machine ---------------------------------------------------------------------------

    def _step(self, out: list[dict[str, Any]]) -> bool:
        """Advance as far as the buffered text allows; True when the state changed."""
        if self._state == _TEXT:
            if self._after_call:
                # The separator between calls is part of the format, not content.
                if not self._buf:
                    return False
                if self._buf.startswith(CALL_SEPARATOR):
                    self._buf = self._buf[len(CALL_SEPARATOR) :]
                self._after_call = False
            pos = self._buf.find(TOOL_CALL_OPEN)
            if pos == -1:
                hold = _held_prefix(self._buf, TOOL_CALL_OPEN)
                self._content(out, self._buf[: len(self._buf) - hold])
                self._buf = self._buf[len(self._buf) - hold :]
                return False
            self._content(out, self._buf[:pos])
            self._buf = self._buf[pos + len(TOOL_CALL_OPEN) :]
            self._state = _HEAD_STATE
            return True
        if self._state == _HEAD_STATE:
            return self._step_head(out)
        if self._state == _REJECTED:
            end = self._buf.find(TOOL_CALL_CLOSE)
            if end == -1:
                return False
            self._content(out, TOOL_CALL_OPEN + self._buf[: end + len(TOOL_CALL_CLOSE)])
            self._buf = self._buf[end + len(TOOL_CALL_CLOSE) :]
            self._state = _TEXT
            return True
        return self._step_args(out)

    def _step_head(self, out: list[dict[str, Any]]) -> bool:
        match = _HEAD.match(self._buf)
        end = self._buf.find(TOOL_CALL_CLOSE)
        if match is not None and (end == -1 or match.end() <= end):
            name = json.loads('"' + match.group(1) + '"')
            if name not in self._names:
                self._state = _REJECTED
                return True
            self._open_call(out, name)
            self._buf = self._buf[match.end() :]
            self._sent = 0
            self._state = _ARGS
            return True
        if end != -1:
            # A whole block whose head is not in the streaming order: parse it at once.
            block = self._buf[:end]
            call = _whole_call(block, self._names)
            if call is None:
                self._state = _REJECTED
                return True
            self._open_call(out, call[0])
            self._args(out, call[1])
            self._close_call(end)
            return True
        if len(self._buf) > _HEAD_PATIENCE:
            self._state = _REJECTED
            return True
        return False

    def _step_args(self, out: list[dict[str, Any]]) -> bool:
        end = self._buf.find(TOOL_CALL_CLOSE)
        while end != -1 and _inside_string(self._buf[:end]):
            # "</tool_call>" inside a JSON string of the arguments is text, not the end of the call.
            end = self._buf.find(TOOL_CALL_CLOSE, end + 1)
        if end == -1:
            # Hold back what may be the call's closing brace, whitespace and the close marker.
            safe_text = self._buf[: len(self._buf) - _held_prefix(self._buf, TOOL_CALL_CLOSE)].rstrip()
            if safe_text.endswith("}"):
                safe_text = safe_text[:-1]
            if len(safe_text) > self._sent:
                self._args(out, self._buf[self._sent : len(safe_text)])
                self._sent = len(safe_text)
            return False
        final = self._buf[:end].rstrip()
        if final.endswith("}"):
            final = final[:-1].rstrip()
        if len(final) > self._sent:
            self._args(out, self._buf[self._sent : len(final)])
        self._close_call(end)
        return True

    def _close_call(self, end: int) -> None:
        self._buf = self._buf[end + len(TOOL_CALL_CLOSE) :]
        self._after_call = True
        self._sent = 0
        self._suppress = False
        self._state = _TEXT

    # -- deltas ----------------------------------------------------------------------------------

    def _content(self, out: list[dict[str, Any]], text: str) -> None:
        if text:
            out.append({"content": text})

    def _open_call(self, out: list[dict[str, Any]], name: str) -> None:
        if self._max_calls is not None and self._calls >= self._max_calls:
            self._suppress = True
            return
        self.saw_tool_call = True
        out.append(
            {
                "tool_calls": [
                    {
                        "index": self._calls,
                        "id": tool_call_id(),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
        )
        self._calls += 1

    def _args(self, out: list[dict[str, Any]], fragment: str) -> None:
        if fragment and not self._suppress:
            out.append({"tool_calls": [{"index": self._calls - 1, "function": {"arguments": fragment}}]})


def _inside_string(text: str) -> bool:
    """Whether JSON text ends inside a string literal."""
    inside = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = inside
        elif ch == '"':
            inside = not inside
    return inside


def _whole_call(block: str, names: set[str]) -> tuple[str, str] | None:
    try:
        value = json.loads(block)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        return str(value["name"]), arguments
    return str(value["name"]), json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def _merge_content(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for delta in deltas:
        if merged and "content" in delta and "content" in merged[-1]:
            merged[-1] = {"content": merged[-1]["content"] + delta["content"]}
        else:
            merged.append(delta)
    return merged


def parse_tool_calls(
    text: str, tools: Sequence[dict[str, Any]] | None, *, max_calls: int | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a whole completion; content is None when only calls remain."""
    stream = ToolCallStream(tools, max_calls=max_calls)
    content: list[str] = []
    calls: list[dict[str, Any]] = []
    for delta in [*stream.feed(text), *stream.finish()]:
        if "content" in delta:
            content.append(delta["content"])
            continue
        for part in delta["tool_calls"]:
            if "id" in part:
                calls.append(
                    {
                        "id": part["id"],
                        "type": "function",
                        "function": {"name": part["function"]["name"], "arguments": ""},
                    }
                )
            calls[part["index"]]["function"]["arguments"] += part["function"]["arguments"]
    joined = "".join(content)
    if calls and not joined.strip():
        return None, calls
    return joined, calls
