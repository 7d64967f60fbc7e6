"""Structured outputs and tools on the node: grammar constraints (llguidance) and tool-call parsing.

Node-side only: it imports llguidance and torch, so nothing under `wire/` may import it.
"""

from inference.structured.batch import BatchMasker
from inference.structured.grammar import GrammarConstraint, Structure, TokenConstraint, ll_tokenizer, structure_for
from inference.structured.tools import (
    CALL_PREFIX,
    CALL_SEPARATOR,
    CALL_SUFFIX,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolCallStream,
    parse_tool_calls,
    tool_call_id,
)

__all__ = [
    "CALL_PREFIX",
    "CALL_SEPARATOR",
    "CALL_SUFFIX",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "BatchMasker",
    "GrammarConstraint",
    "Structure",
    "TokenConstraint",
    "ToolCallStream",
    "ll_tokenizer",
    "parse_tool_calls",
    "structure_for",
    "tool_call_id",
]
