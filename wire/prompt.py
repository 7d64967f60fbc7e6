"""Turning a request into prompt token ids: one code path for the node's engine and the gateway's
admission count, so the tokens reserved are the tokens served.

Takes any Hugging Face-style tokenizer (duck-typed: nothing here imports transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class PromptRejected(ValueError):
    """The model's chat template refused the messages (as real templates do for roles or orders
    they do not support): the client's input, a 400 naming `messages`."""


def chat_prompt_ids(
    tokenizer: Any, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
) -> list[int]:
    """The prompt of a chat request: the model's chat template, or a plain transcript without one.
    `tools` (OpenAI's shape) go to the template, as Hugging Face templates take them."""
    if getattr(tokenizer, "chat_template", None):
        try:
            extra: dict[str, Any] = {"tools": list(tools)} if tools else {}
            text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False, **extra)
        except Exception as exc:  # jinja2's TemplateError from raise_exception, or the template tripping on input
            raise PromptRejected(str(exc) or type(exc).__name__) from exc
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # No template: a plain transcript, so base models still answer.
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return text_prompt_ids(tokenizer, text)


def text_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """The prompt of a completions request."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def message_text(content: Any) -> str:
    """A message's content as the template sees it: a string, or its text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] if isinstance(part, dict) else part.text for part in content)
