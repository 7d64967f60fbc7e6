"""Per-request sampling controls in the torch engine, on the demo model: n, penalties, logit_bias,
seeds, logprobs, prompt logprobs, grammar constraints, and independence from the rest of the batch."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from inference.engine.base import EngineRequest, SamplingParams, TokenLogprob


@dataclass
class Seq:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    reason: str | None = None


async def run(engine: Any, rid: str, prompt: str, **params: Any) -> list[Seq]:
    p = SamplingParams(**params)
    seqs = [Seq() for _ in range(p.n)]
    async for out in engine.generate(EngineRequest(rid, engine.encode(prompt), p)):
        assert out.index >= 0, out
        seq = seqs[out.index]
        seq.tokens += out.token_ids
        seq.text += out.text
        seq.logprobs += out.logprobs or []
        if out.prompt_logprobs is not None:
            seq.prompt_logprobs = out.prompt_logprobs
        if out.finished:
            seq.reason = out.finish_reason
    return seqs


async def test_n_sequences_share_one_prefill_and_decode_together(engine: Any) -> None:
    (solo,) = await run(engine, "solo", "several of one", max_tokens=30, temperature=0)
    steps = engine.steps
    greedy = await run(engine, "n3", "several of one", max_tokens=30, temperature=0, n=3)
    assert [s.tokens for s in greedy] == [solo.tokens] * 3
    assert all(s.reason == "length" for s in greedy)
    # Three sequences, one prefill and one decode step per token (not three of each).
    assert engine.steps - steps == 29
    sampled = await run(engine, "s3", "several of one", max_tokens=30, temperature=1.0, seed=11, n=3)
    assert len({tuple(s.tokens) for s in sampled}) == 3  # each sequence its own random stream
    again = await run(engine, "s3b", "several of one", max_tokens=30, temperature=1.0, seed=11, n=3)
    assert [s.tokens for s in again] == [s.tokens for s in sampled]  # the seed reproduces all three


async def test_logit_bias_forbids_and_forces_tokens(engine: Any) -> None:
    (plain,) = await run(engine, "plain", "bias me", max_tokens=24, temperature=0)
    common = Counter(plain.tokens).most_common(1)[0][0]
    (banned,) = await run(engine, "ban", "bias me", max_tokens=24, temperature=0, logit_bias=((common, -100.0),))
    assert common not in banned.tokens
    assert banned.tokens != plain.tokens
    forced_token = next(t for t in range(40, 120) if t not in plain.tokens)
    (forced,) = await run(engine, "force", "bias me", max_tokens=24, temperature=0, logit_bias=((forced_token, 100.0),))
    assert forced.tokens == [forced_token] * 24
    # Sampling too: +100 leaves no room for anything else.
    (hot,) = await run(
        engine, "hot", "bias me", max_tokens=12, temperature=1.5, seed=1, logit_bias=((forced_token, 100.0),)
    )
    assert hot.tokens == [forced_token] * 12


def _repeats(tokens: list[int]) -> int:
    return len(tokens) - len(set(tokens))


async def test_penalties_reduce_repetition(engine: Any) -> None:
    (plain,) = await run(engine, "plain", "say it again and again", max_tokens=60, temperature=0)
    (frequency,) = await run(
        engine, "freq", "say it again and again", max_tokens=60, temperature=0, frequency_penalty=2.0
    )
    (presence,) = await run(
        engine, "pres", "say it again and again", max_tokens=60, temperature=0, presence_penalty=2.0
    )
    assert _repeats(plain.tokens) > 0
    assert _repeats(frequency.tokens) < _repeats(plain.tokens)
    assert len(set(presence.tokens)) > len(set(plain.tokens))
    # A negative penalty does the opposite: it favours what was already said.
    (sticky,) = await run(engine, "neg", "say it again and again", max_tokens=60, temperature=0, frequency_penalty=-2.0)
    assert _repeats(sticky.tokens) > _repeats(plain.tokens)


async def test_logprobs_are_log_probabilities_of_the_chosen_tokens(engine: Any) -> None:
    (seq,) = await run(engine, "lp", "how likely", max_tokens=16, temperature=0, logprobs=5)
    assert len(seq.logprobs) == len(seq.tokens) == 16
    for token, lp in zip(seq.tokens, seq.logprobs, strict=True):
        assert lp.token_id == token
        assert lp.logprob <= 0
        assert len(lp.top) == 5
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert lp.top[0] == (token, lp.logprob)  # greedy takes the most likely token
        assert sum(torch.tensor([v for _, v in lp.top]).exp().tolist()) <= 1.0 + 1e-5
    (none,) = await run(engine, "lp0", "how likely", max_tokens=4, temperature=0, logprobs=0)
    assert all(lp.top == () and lp.logprob <= 0 for lp in none.logprobs)
    (without,) = await run(engine, "nolp", "how likely", max_tokens=4, temperature=0)
    assert without.logprobs == []


async def test_prompt_logprobs_cover_the_prompt(engine: Any) -> None:
    prompt = "echo this"
    (seq,) = await run(engine, "echo", prompt, max_tokens=3, temperature=0, prompt_logprobs=2)
    ids = engine.encode(prompt)
    assert seq.prompt_logprobs is not None and len(seq.prompt_logprobs) == len(ids)
    assert seq.prompt_logprobs[0] is None
    for token, lp in zip(ids[1:], seq.prompt_logprobs[1:], strict=True):
        assert lp is not None and lp.token_id == token and lp.logprob <= 0 and len(lp.top) == 2
    # max_tokens 0 scores the prompt alone: the same logprobs, nothing generated, for every choice.
    scored = await run(engine, "score", prompt, max_tokens=0, temperature=0, prompt_logprobs=2, n=2)
    for choice in scored:
        assert (choice.tokens, choice.text, choice.reason) == ([], "", "length")
        assert choice.prompt_logprobs == seq.prompt_logprobs


class _DigitsThenDone:
    """A grammar stand-in: only the tokens of '0'-'9', complete after four of them."""

    def __init__(self, allowed: list[int], vocab: int) -> None:
        self.mask = torch.zeros(vocab, dtype=torch.bool)
        self.mask[allowed] = True
        self.seen: list[int] = []

    def allowed_mask(self) -> torch.Tensor:
        return self.mask

    def advance(self, token_id: int) -> None:
        self.seen.append(token_id)

    def is_finished(self) -> bool:
        return len(self.seen) >= 4


async def test_a_constraint_masks_decoding_and_ends_the_sequence(engine: Any) -> None:
    digits = sorted({engine.encode(str(d))[-1] for d in range(10)})
    made: list[_DigitsThenDone] = []

    def constraint() -> _DigitsThenDone:
        made.append(_DigitsThenDone(digits, engine.vocab_size))
        return made[-1]

    seqs = await run(
        engine, "digits", "write words", max_tokens=20, temperature=1.0, seed=2, n=2, constraint=constraint
    )
    assert len(made) == 2  # one grammar state per sequence
    for seq, state in zip(seqs, made, strict=True):
        assert seq.reason == "stop" and len(seq.tokens) == 4
        assert set(seq.tokens) <= set(digits) and seq.text.isdigit()
        assert state.seen == seq.tokens


async def test_a_request_gets_the_same_tokens_whatever_shares_its_batch(engine: Any) -> None:
    prompt = "the same alone or not"
    (alone,) = await run(engine, "alone", prompt, max_tokens=40, temperature=0)
    (alone_lp,) = await run(engine, "alone-lp", prompt, max_tokens=40, temperature=0, logprobs=3)

    async def neighbour(i: int) -> list[Seq]:
        await asyncio.sleep(0.003 * i)
        return await run(
            engine,
            f"n{i}",
            f"a noisy neighbour {i} " * (i + 1),
            max_tokens=30 + i,
            temperature=0.8 + 0.1 * i,
            seed=i,
            n=1 + i % 2,
            presence_penalty=1.5,
            frequency_penalty=-1.0,
            logit_bias=((60 + i, 50.0),),
            logprobs=2,
        )

    steps = engine.steps
    results = await asyncio.gather(
        run(engine, "in-batch", prompt, max_tokens=40, temperature=0),
        run(engine, "in-batch-lp", prompt, max_tokens=40, temperature=0, logprobs=3),
        *(neighbour(i) for i in range(4)),
    )
    (batched,), (batched_lp,) = results[0], results[1]
    assert engine.steps - steps < 40 + 30 * 4  # they did share decode steps
    assert batched.tokens == alone.tokens
    assert batched_lp.tokens == alone.tokens == alone_lp.tokens
    for a, b in zip(alone_lp.logprobs, batched_lp.logprobs, strict=True):
        assert a.token_id == b.token_id and abs(a.logprob - b.logprob) < 1e-3
