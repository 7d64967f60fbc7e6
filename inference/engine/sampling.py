"""Per-sequence sampling for the torch engine: grammar mask, logit bias, presence and frequency
penalties, temperature, top-p, seeded generators and log-probabilities.

Each sequence owns its state and reads only its own row of the batch's logits, so what a request
gets never depends on what else is in the batch.
"""

from __future__ import annotations

from typing import Any

from inference.engine.base import SamplingParams, TokenConstraint, TokenLogprob

# What OpenAI reports for a token that cannot be chosen at all (JSON has no -inf).
_FLOOR = -9999.0


def _finite(value: float) -> float:
    return value if value > _FLOOR else _FLOOR


class SequenceSampler:
    """Chooses the tokens of one sequence. Lives on the engine thread only."""

    __slots__ = ("_bias", "_counts", "_device", "constraint", "generator", "params")

    def __init__(self, params: SamplingParams, *, index: int, device: str) -> None:
        import torch

        self.params = params
        self._device = device
        self._bias: Any = None
        self._counts: Any = None  # occurrences of each token in the completion so far
        self.constraint: TokenConstraint | None = params.constraint() if params.constraint is not None else None
        self.generator: Any = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                # Each of the n sequences its own stream, the same on every run with this seed.
                self.generator.manual_seed((params.seed + index) % (1 << 63))
            else:
                self.generator.seed()

    def plain(self, *, masked: bool = False) -> bool:
        """Greedy with nothing to adjust: the batch's argmax is this sequence's choice (`masked`:
        the batch's logits already carry this sequence's grammar mask)."""
        p = self.params
        return (
            p.greedy
            and (self.constraint is None or masked)
            and not p.logit_bias
            and not p.presence_penalty
            and not p.frequency_penalty
            and p.logprobs is None
        )

    def _adjusted(self, logits: Any, masked: bool) -> Any:
        import torch

        p = self.params
        x = logits.float()
        if self.constraint is not None and not masked:
            mask = self.constraint.allowed_mask()
            if mask is not None:
                x = x.masked_fill(~mask.to(x.device, dtype=torch.bool)[: x.shape[-1]], float("-inf"))
        if p.logit_bias:
            if self._bias is None:
                self._bias = torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
                for token, bias in p.logit_bias:
                    if token < x.shape[-1]:
                        self._bias[token] = bias
            x = x + self._bias
        if self._counts is not None:
            # OpenAI's formula: logit - count * frequency_penalty - (count > 0) * presence_penalty.
            x = x - self._counts * p.frequency_penalty - (self._counts > 0).float() * p.presence_penalty
        return x

    def choose(self, logits: Any, *, masked: bool = False) -> tuple[int, TokenLogprob | None]:
        """The next token from this sequence's row of logits, and its log-probability if asked."""
        import torch

        p = self.params
        x = self._adjusted(logits, masked)
        if p.greedy:
            token = int(torch.argmax(x).item())
        else:
            probs = torch.softmax(x / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                cumulative = torch.cumsum(sorted_probs, dim=-1)
                # Keep the smallest prefix whose mass reaches top_p (always at least one token).
                keep = cumulative - sorted_probs < p.top_p
                sorted_probs = sorted_probs * keep
                choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=self.generator)
                token = int(order[choice].item())
            else:
                token = int(torch.multinomial(probs, 1, generator=self.generator).item())
        logprob = None
        if p.logprobs is not None:
            logprob = token_logprob(torch.log_softmax(x, dim=-1), token, p.logprobs)
        self.accepted(token, x.shape[-1])
        return token, logprob

    def accepted(self, token: int, vocab: int) -> None:
        """Record a chosen token: penalty counts and grammar state."""
        import torch

        p = self.params
        if p.presence_penalty or p.frequency_penalty:
            if self._counts is None:
                self._counts = torch.zeros(vocab, dtype=torch.float32, device=self._device)
            self._counts[token] += 1
        if self.constraint is not None:
            self.constraint.advance(token)

    def grammar_done(self) -> bool:
        return self.constraint is not None and self.constraint.is_finished()


def token_logprob(logprobs: Any, token: int, top: int) -> TokenLogprob:
    """A chosen token's log-probability and the `top` most likely tokens, from a log-softmax row."""
    import torch

    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, ids = torch.topk(logprobs, top)
        alternatives = tuple((int(i), _finite(float(v))) for i, v in zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token_id=token, logprob=_finite(float(logprobs[token].item())), top=alternatives)


def prompt_logprobs(logits: Any, prompt_ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the tokens before it (the first has none)."""
    import torch

    if len(prompt_ids) < 2:
        return [None] * len(prompt_ids)
    rows = torch.log_softmax(logits[:-1].float(), dim=-1)
    out: list[TokenLogprob | None] = [None]
    for position, token in enumerate(prompt_ids[1:]):
        out.append(token_logprob(rows[position], token, top))
    return out
