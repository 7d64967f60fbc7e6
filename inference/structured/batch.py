"""Masking a whole decode step at once: one bit mask buffer for the batch, filled by llguidance in
one call (in parallel where there are cores), unpacked by one lookup and applied by one masked_fill.

Per-row masking costs a handful of small tensor operations per constrained row; on a small model
that is most of a step. With this, a constrained greedy row costs its mask computation only and
the batch keeps its single argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np

from inference.structured.grammar import BYTE_BITS, GrammarConstraint

if TYPE_CHECKING:
    import torch


class BatchMasker:
    """Applies the constraints of a batch's rows to its logits in place. Engine thread only."""

    __slots__ = ("_executor", "_rows", "_vocab", "_words")

    def __init__(self, vocab_size: int, *, threads: int | None = None) -> None:
        self._vocab = vocab_size
        self._rows = 0
        self._words = np.zeros((0, (vocab_size + 31) // 32), dtype=np.int32)
        self._executor = llguidance.LLExecutor(num_threads=threads)

    def _buffer(self, rows: int) -> np.ndarray:
        if rows > self._rows:
            self._rows = max(rows, 2 * self._rows)
            self._words = np.zeros((self._rows, self._words.shape[1]), dtype=np.int32)
        return self._words

    def apply(self, logits: torch.Tensor, constraints: Sequence[Any | None]) -> list[int]:
        """Set disallowed logits to -inf for every row with a constraint; the rows masked."""
        import torch

        rows = [i for i, c in enumerate(constraints) if c is not None]
        if not rows:
            return []
        words = self._buffer(len(rows))
        grammar: list[tuple[llguidance.LLMatcher, int]] = []
        other: list[tuple[int, Any]] = []
        for k, i in enumerate(rows):
            constraint = constraints[i]
            matcher = constraint.matcher_for_batch() if isinstance(constraint, GrammarConstraint) else None
            if matcher is None:
                other.append((k, constraint))
            else:
                grammar.append((matcher, k))
        if grammar:
            row_bytes = words.shape[1] * 4
            self._executor.unsafe_compute_mask_ptr(grammar, int(words.ctypes.data), row_bytes, len(rows))
        allowed = torch.from_numpy(BYTE_BITS[words[: len(rows)].view(np.uint8)].reshape(len(rows), -1))
        allowed = allowed[:, : logits.shape[-1]]
        for k, constraint in other:
            # Not an llguidance matcher (a failed one, or another implementation): its own mask.
            mask = constraint.allowed_mask()
            allowed[k] = True if mask is None else mask[: logits.shape[-1]]
        if allowed.device != logits.device:
            allowed = allowed.to(logits.device, non_blocking=True)
        if len(rows) == logits.shape[0]:
            logits.masked_fill_(~allowed, float("-inf"))
        else:
            index = torch.tensor(rows, device=logits.device)
            logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
        return rows
