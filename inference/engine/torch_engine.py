"""Continuous batching over a Hugging Face causal LM with plain transformers forward passes.

The running batch is one left-padded key/value cache. Between decode steps new requests are
prefilled alone and concatenated into it (padding the shorter side on the left, masked out), and
finished or aborted rows are filtered out, as text-generation-inference's original Python server did.
All model work happens on one engine thread; the event loop only exchanges messages with it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.engine.accounting import EngineAccounting
from inference.engine.base import (
    Engine,
    EngineOutput,
    EngineRequest,
    FinishReason,
    IncrementalDetokenizer,
    TokenLogprob,
)
from inference.engine.sampling import SequenceSampler, prompt_logprobs
from wire.prompt import chat_prompt_ids, text_prompt_ids

logger = logging.getLogger("inference.engine.torch")

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(slots=True)
class _Row:
    request: EngineRequest
    sink: asyncio.Queue[EngineOutput]
    detok: IncrementalDetokenizer
    length: int  # real tokens in the cache for this row
    sampler: SequenceSampler
    index: int = 0  # which of the request's n sequences
    generated: int = 0
    last_token: int = 0
    done: bool = False
    finish_reason: FinishReason | None = None


def _deliver(batch: list[tuple[asyncio.Queue[EngineOutput], EngineOutput]]) -> None:
    for sink, out in batch:
        sink.put_nowait(out)


class TorchEngine(Engine):
    def __init__(
        self,
        *,
        model_path: str | Path,
        max_batch_size: int = 8,
        max_tokens: int = 512,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int = 0,
    ) -> None:
        self.model_path = Path(model_path)
        self.max_batch_size = max_batch_size
        self.max_tokens = max_tokens
        self.device = device
        self.dtype = _DTYPES.get(dtype, "float32")
        self.threads = threads
        self.context_length = 0
        self._model: Any = None
        self._cache_kw = "past_key_values"
        self._tokenizer: Any = None
        self._eos: set[int] = set()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sinks: dict[str, asyncio.Queue[EngineOutput]] = {}
        self._outbox: list[tuple[asyncio.Queue[EngineOutput], EngineOutput]] = []
        self._running = 0
        self._batch_masker: Any = None
        self._healthy = False
        self._stopping = False
        # Decode steps taken and rows decoded, for the batch-size metric and benchmarks.
        self.steps = 0
        self.rows_decoded = 0
        self.accounting = EngineAccounting()  # each step's wall time, split among its requests
        self._rows_left: dict[str, int] = {}  # a request's sequences not yet finished (n > 1)

    # -- lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load model and tokenizer (blocking); `start` calls it in a worker thread."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # progress bars are noise in a service log

        threads = self.threads
        if threads <= 0 and self.device == "cpu":
            # Leave a core to the event loop: torch's spinning worker threads otherwise starve it,
            # and every step waits on the loop (measured: 7x fewer steps/s on 2 busy cores).
            threads = max(1, (os.cpu_count() or 2) - 1)
        if threads > 0:
            torch.set_num_threads(threads)
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(self.model_path), local_files_only=True, dtype=getattr(torch, self.dtype)
        )
        self._model = model.to(self.device)  # type: ignore[arg-type]
        self._model.eval()
        # transformers renamed past_key_values to cache; pass whichever this version takes.
        params = inspect.signature(self._model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        config = self._model.config
        self.context_length = int(
            getattr(config, "max_position_embeddings", 0) or getattr(self._tokenizer, "model_max_length", 2048)
        )
        eos: set[int] = set()
        for source in (getattr(self._model, "generation_config", None), config, self._tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, list | tuple):
                eos.update(int(v) for v in value)
        self._eos = eos
        self.vocab_size = int(getattr(config, "vocab_size", 0) or len(self._tokenizer))

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._model is None:
            await asyncio.to_thread(self.load)
        self._thread = threading.Thread(target=self._run, name="torch-engine", daemon=True)
        self._thread.start()
        self._healthy = True

    async def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("stop", None))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)
        self._healthy = False

    def healthy(self) -> bool:
        return self._healthy and self._thread is not None and self._thread.is_alive()

    def running(self) -> int:
        return self._running

    # -- tokenizer -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return text_prompt_ids(self._tokenizer, text)

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        # Raises PromptRejected when the chat template refuses the messages.
        return chat_prompt_ids(self._tokenizer, messages, tools=tools)

    def token_text(self, token_id: int) -> str:
        return str(self._tokenizer.decode([token_id], skip_special_tokens=False))

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # -- requests --------------------------------------------------------------------------------

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        sink: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self._sinks[request.request_id] = sink
        self._inbox.put(("new", (request, sink)))
        finished = False
        remaining = request.params.n
        try:
            while True:
                out = await sink.get()
                if out.finished:
                    remaining -= 1
                    # Index -1 ends the whole request (aborted or failed before it ran).
                    finished = remaining <= 0 or out.index < 0
                yield out
                if finished:
                    return
        finally:
            self._sinks.pop(request.request_id, None)
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    # -- engine thread ---------------------------------------------------------------------------

    def _emit(self, row: _Row, out: EngineOutput) -> None:
        out.engine_ms = self.accounting.ms(row.request.request_id)
        self._outbox.append((row.sink, out))

    def _flush(self) -> None:
        # One wake-up of the event loop per step for all rows, not one per row.
        if self._outbox:
            batch, self._outbox = self._outbox, []
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_deliver, batch)

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            try:
                self._loop_forever()
            except Exception as exc:
                logger.exception("engine thread crashed")
                self._healthy = False
                # Nobody may wait forever on a dead engine.
                failed = EngineOutput(text="", finished=True, finish_reason="error", error=str(exc), index=-1)
                self._outbox = [(sink, failed) for sink in list(self._sinks.values())]
                self._flush()

    def _loop_forever(self) -> None:

        rows: list[_Row] = []
        cache: Any = None
        mask: Any = None
        aborted: set[str] = set()
        while True:
            # Block only when idle; otherwise take whatever arrived since the last step.
            pending: list[tuple[str, Any]] = []
            if not rows:
                pending.append(self._inbox.get())
            while True:
                try:
                    pending.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            new: list[tuple[EngineRequest, asyncio.Queue[EngineOutput]]] = []
            for kind, payload in pending:
                if kind == "stop":
                    for row in rows:
                        self._finish(row, "aborted")
                    self._flush()
                    return
                if kind == "new":
                    new.append(payload)
                elif kind == "abort":
                    aborted.add(payload)
            if aborted:
                for row in rows:
                    if row.request.request_id in aborted:
                        self._finish(row, "aborted")
                for request, sink in new:
                    if request.request_id in aborted:
                        self._emit_abort(request, sink)
                new = [(r, s) for r, s in new if r.request_id not in aborted]
                aborted.clear()
            try:
                for request, sink in new:
                    new_rows, row_cache = self._prefill(request, sink)
                    rows, cache, mask = self._merge(rows, cache, mask, new_rows, row_cache)
                self._flush()  # first tokens out before the next step
                rows, cache, mask = self._filter(rows, cache, mask)
                self._running = len(rows)
                if rows:
                    mask = self._decode(rows, cache, mask)
                    rows, cache, mask = self._filter(rows, cache, mask)
                    self._running = len(rows)
                self._flush()
            except Exception as exc:
                logger.exception("engine step failed")
                for row in rows:
                    self._finish(row, "error", error=str(exc))
                for request, sink in new:
                    self.accounting.forget(request.request_id)  # a prefill may have been charged
                    self._rows_left.pop(request.request_id, None)
                    if request.request_id in self._sinks:
                        self._loop_call(
                            sink, EngineOutput(text="", finished=True, finish_reason="error", error=str(exc), index=-1)
                        )
                rows, cache, mask = [], None, None
                self._running = 0
                self._flush()

    def _loop_call(self, sink: asyncio.Queue[EngineOutput], out: EngineOutput) -> None:
        self._outbox.append((sink, out))

    def _emit_abort(self, request: EngineRequest, sink: asyncio.Queue[EngineOutput]) -> None:
        self._loop_call(sink, EngineOutput(text="", finished=True, finish_reason="aborted", index=-1))

    def _finish(self, row: _Row, reason: FinishReason, *, error: str | None = None) -> None:
        if row.done:
            return
        row.done = True
        row.finish_reason = reason
        tail = row.detok.flush() if reason in ("length", "stop") else ""
        self._emit(
            row,
            EngineOutput(
                text=tail,
                finished=True,
                finish_reason=reason,
                completion_tokens=row.generated,
                error=error,
                index=row.index,
            ),
        )
        left = self._rows_left.pop(row.request.request_id, 1) - 1
        if left > 0:  # its other sequences still run and are still charged
            self._rows_left[row.request.request_id] = left
        else:
            self.accounting.forget(row.request.request_id)

    def _prefill(self, request: EngineRequest, sink: asyncio.Queue[EngineOutput]) -> tuple[list[_Row], Any]:
        """Run the prompt once; its n sequences share the result (the cache rows are copies)."""
        import torch
        from transformers import DynamicCache

        params = request.params
        rows = [
            _Row(
                request=request,
                sink=sink,
                detok=IncrementalDetokenizer(self._tokenizer, params.stop),
                length=len(request.prompt_ids),
                sampler=SequenceSampler(params, index=i, device=self.device),
                index=i,
            )
            for i in range(params.n)
        ]
        ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
        # No config: plain full-attention layers whose tensors we can pad, concatenate and filter.
        cache = DynamicCache()
        self._rows_left[request.request_id] = params.n
        started = self.accounting.begin()
        out = self._model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{self._cache_kw: cache})
        self.accounting.charge_since(started, [request.request_id])
        if params.n > 1:
            for layer in self._layers(cache):
                layer.keys = layer.keys.repeat(params.n, 1, 1, 1)
                layer.values = layer.values.repeat(params.n, 1, 1, 1)
        prompt_lps = None
        if params.prompt_logprobs is not None:
            prompt_lps = prompt_logprobs(out.logits[0], request.prompt_ids, params.prompt_logprobs)
        if params.max_tokens == 0:  # the prompt scored (echo), nothing generated
            for row in rows:
                self._emit(row, EngineOutput(text="", index=row.index, prompt_logprobs=prompt_lps))
                self._finish(row, "length")
            return [], cache
        last = out.logits[0, -1, :]
        for row in rows:
            self._choose(row, last, prompt_lps=prompt_lps)
        live = [r for r in rows if not r.done]
        keep = torch.tensor([r.index for r in live], dtype=torch.long, device=self.device)
        if live and len(live) < len(rows):
            for layer in self._layers(cache):
                layer.keys = layer.keys.index_select(0, keep)
                layer.values = layer.values.index_select(0, keep)
        return live, cache

    def _choose(
        self,
        row: _Row,
        logits: Any,
        *,
        greedy_token: int | None = None,
        prompt_lps: list[TokenLogprob | None] | None = None,
        masked: bool = False,
    ) -> None:
        import torch

        logprob = None
        sampler = row.sampler
        if sampler.plain(masked=masked):
            token = greedy_token if greedy_token is not None else int(torch.argmax(logits).item())
            if sampler.constraint is not None:
                sampler.accepted(token, logits.shape[-1])
        else:
            token, logprob = sampler.choose(logits, masked=masked)
        self._accept(row, token, logprob, prompt_lps)

    def _decode(self, rows: list[_Row], cache: Any, mask: Any) -> Any:
        import torch

        ids = torch.tensor([[r.last_token] for r in rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.length] for r in rows], dtype=torch.long, device=self.device)
        full_mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        started = self.accounting.begin()
        out = self._model(
            input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True, **{self._cache_kw: cache}
        )
        logits = out.logits[:, -1, :]
        self.accounting.charge_since(started, [r.request.request_id for r in rows])
        self.steps += 1
        self.rows_decoded += len(rows)
        constraints = [r.sampler.constraint for r in rows]
        # Grammar rows: every mask of the step in one call, applied in place to those rows only.
        masked = any(c is not None for c in constraints) and bool(self._masker(logits).apply(logits, constraints))
        greedy = torch.argmax(logits, dim=-1).tolist()
        for i, row in enumerate(rows):
            row.length += 1
            self._choose(row, logits[i], greedy_token=greedy[i], masked=masked)
        return full_mask

    def _masker(self, logits: Any) -> Any:
        if self._batch_masker is None:
            from inference.structured import BatchMasker  # llguidance: loaded only once grammars are used

            self._batch_masker = BatchMasker(int(logits.shape[-1]))
        return self._batch_masker

    def _accept(
        self,
        row: _Row,
        token: int,
        logprob: TokenLogprob | None,
        prompt_lps: list[TokenLogprob | None] | None = None,
    ) -> None:
        row.generated += 1
        row.last_token = token
        if token in self._eos:
            if prompt_lps is not None:  # the echo's logprobs still go out
                self._emit(row, EngineOutput(text="", index=row.index, prompt_logprobs=prompt_lps))
            self._finish(row, "stop")
            return
        delta = row.detok.add(token)
        out = EngineOutput(
            text=delta,
            token_ids=[token],
            completion_tokens=row.generated,
            index=row.index,
            logprobs=None if logprob is None else [logprob],
            prompt_logprobs=prompt_lps,
        )
        self._emit(row, out)
        if row.detok.stopped or row.sampler.grammar_done():
            self._finish(row, "stop")
            return
        # prompt + generated tokens may not exceed the context (row.length is one behind).
        if row.generated >= row.request.params.max_tokens or row.length + 1 >= self.context_length:
            self._finish(row, "length")

    @staticmethod
    def _layers(cache: Any) -> list[Any]:
        return list(cache.layers)

    def _merge(
        self, rows: list[_Row], cache: Any, mask: Any, new_rows: list[_Row], row_cache: Any
    ) -> tuple[list[_Row], Any, Any]:
        import torch
        import torch.nn.functional as F

        if not new_rows:
            return rows, cache, mask
        length = new_rows[0].length
        row_mask = torch.ones((len(new_rows), length), dtype=torch.long, device=self.device)
        if not rows:
            return new_rows, row_cache, row_mask
        width = max(mask.shape[1], length)
        pad_batch = width - mask.shape[1]
        pad_row = width - length
        for layer, new_layer in zip(self._layers(cache), self._layers(row_cache), strict=True):
            # Keys and values are [batch, heads, seq, head_dim]; pad the seq axis on the left with zeros.
            keys, values = layer.keys, layer.values
            new_keys, new_values = new_layer.keys, new_layer.values
            if pad_batch:
                keys = F.pad(keys, (0, 0, pad_batch, 0))
                values = F.pad(values, (0, 0, pad_batch, 0))
            if pad_row:
                new_keys = F.pad(new_keys, (0, 0, pad_row, 0))
                new_values = F.pad(new_values, (0, 0, pad_row, 0))
            layer.keys = torch.cat([keys, new_keys], dim=0)
            layer.values = torch.cat([values, new_values], dim=0)
        mask = torch.cat([F.pad(mask, (pad_batch, 0)), F.pad(row_mask, (pad_row, 0))], dim=0)
        return [*rows, *new_rows], cache, mask

    def _filter(self, rows: list[_Row], cache: Any, mask: Any) -> tuple[list[_Row], Any, Any]:
        import torch

        keep = [i for i, r in enumerate(rows) if not r.done]
        if len(keep) == len(rows):
            return rows, cache, mask
        if not keep:
            return [], None, None
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = mask.index_select(0, index)
        # Drop leading columns that are padding for every remaining row.
        first = int(torch.nonzero(mask.any(dim=0), as_tuple=False)[0].item())
        mask = mask[:, first:]
        for layer in self._layers(cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, first:, :]
            layer.values = layer.values.index_select(0, index)[:, :, first:, :]
        return [rows[i] for i in keep], cache, mask
