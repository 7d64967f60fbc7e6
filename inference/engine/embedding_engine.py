"""Sentence embeddings with a Hugging Face encoder (BERT family): mean pooling over the real tokens,
L2-normalised, as sentence-transformers' all-MiniLM-L6-v2 is meant to be used.

Requests are batched across callers by a small dynamic batcher: the first waiting request opens a
batch, requests arriving within `batch_window_ms` (or while the previous batch runs) join it, up to
`max_batch_size` inputs per forward pass. The window is held open only while callers come
together (the last batch had company); a lone caller runs at once. Forward passes run in a worker
thread, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.engine.base import Engine, EngineError, EngineOutput, EngineRequest
from wire.embeddings import special_tokens_around
from wire.prompt import PromptRejected

logger = logging.getLogger("inference.engine.embedding")

ENGINE_KIND_EMBEDDING = "embedding"


@dataclass(slots=True)
class _Job:
    ids: list[list[int]]
    future: asyncio.Future[Any]


def _max_input_tokens(path: Path, config: Any, tokenizer: Any) -> int:
    """The longest input the model was trained for: sentence-transformers' max_seq_length when the
    directory has one (inputs beyond it would be silently cut there), else the position table."""
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return int(getattr(config, "max_position_embeddings", 0) or getattr(tokenizer, "model_max_length", 512))


class EmbeddingEngine(Engine):
    kind = ENGINE_KIND_EMBEDDING

    def __init__(
        self,
        *,
        model_path: str | Path,
        max_batch_size: int = 64,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int = 0,
        batch_window_ms: float = 2.0,
    ) -> None:
        self.model_path = Path(model_path)
        self.max_batch_size = max_batch_size
        self.device = device
        self.dtype = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
        self.threads = threads
        self.batch_window_s = max(0.0, batch_window_ms) / 1000
        self.context_length = 0
        self.max_input_tokens = 0
        self.dimensions = 0
        self.vocab_size = 0
        self.forward_calls = 0  # forward passes run so far (tests and metrics read it)
        self.batches = 0  # batches the batcher formed (one or more forward passes each)
        self._tokenizer: Any = None
        self._prefix: list[int] = []
        self._suffix: list[int] = []
        self._model: Any = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = 0
        self._company = False  # the last batch had more than one caller, or others waited behind it

    # -- life ----------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the encoder and its tokenizer from the local directory (blocking; `local_files_only`:
        never a download)."""
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        threads = self.threads
        if threads <= 0 and self.device == "cpu":
            threads = max(1, (os.cpu_count() or 2) - 1)  # leave a core to the event loop
        if threads > 0:
            torch.set_num_threads(threads)
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
        model = AutoModel.from_pretrained(str(self.model_path), local_files_only=True, dtype=getattr(torch, self.dtype))
        self._model = model.to(self.device).eval()  # type: ignore[arg-type]
        config = self._model.config
        self.dimensions = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        self.context_length = int(getattr(config, "max_position_embeddings", 512))
        self.max_input_tokens = min(self.context_length, _max_input_tokens(self.model_path, config, self._tokenizer))
        self._prefix, self._suffix = special_tokens_around(self._tokenizer)

    async def start(self) -> None:
        if self._model is None:
            await asyncio.to_thread(self.load)
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._batcher(), name="embedding-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def healthy(self) -> bool:
        return self._model is not None and self._task is not None and not self._task.done()

    def running(self) -> int:
        return self._running

    def counts(self) -> tuple[int, int]:
        """(batches formed, forward passes run) so far."""
        return self.batches, self.forward_calls

    # -- tokens --------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """A text input as the model runs it, with its special tokens ([CLS] ... [SEP])."""
        return list(self._tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Several texts in one call: the fast tokenizer does a batch at once."""
        if not texts:
            return []
        return [list(ids) for ids in self._tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]

    def wrap(self, token_ids: Sequence[int]) -> list[int]:
        """A client's token array (the model's vocabulary, no special tokens) as the model runs it, so
        a text and its token array give the same embedding and the same count."""
        return [*self._prefix, *token_ids, *self._suffix]

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        raise PromptRejected("this model makes embeddings; it has no chat template")

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        raise EngineError("an embedding model does not generate text")
        yield  # pragma: no cover - makes this an async generator

    def abort(self, request_id: str) -> None:
        """Nothing to abort: a cancelled caller's batch finishes and its result is dropped."""

    # -- embeddings ----------------------------------------------------------------------------------
    async def embed(self, inputs: list[list[int]]) -> Any:
        """Embeddings of token-id inputs (special tokens included): a float32 array, one row each."""
        rows, _ = await self.embed_timed(inputs)
        return rows

    async def embed_timed(self, inputs: list[list[int]]) -> tuple[Any, float]:
        """The embeddings and this request's share of the forward passes' time, in ms (split among
        a batch's requests by their tokens, as the engine's cost is)."""
        if self._queue is None:
            raise EngineError("the embedding engine is not started")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(inputs, future))
        rows, engine_ms = await future
        return rows, engine_ms

    async def _batcher(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            size = len(jobs[0].ids)
            # Hold the batch open only when callers have been arriving together: a lone caller
            # does not wait for company that is not coming.
            window = self.batch_window_s if self._company or not queue.empty() else 0.0
            deadline = loop.time() + window
            while size < self.max_batch_size:
                if queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    job = queue.get_nowait()
                jobs.append(job)
                size += len(job.ids)
            jobs = [job for job in jobs if not job.future.done()]  # callers gone: skip their work
            if not jobs:
                continue
            flat = [ids for job in jobs for ids in job.ids]
            self._running = len(flat)
            self.batches += 1
            started = time.perf_counter()
            try:
                vectors = await asyncio.to_thread(self.forward, flat)
            except Exception as exc:
                logger.exception("embedding batch of %d inputs failed", len(flat))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(EngineError(str(exc) or type(exc).__name__))
                continue
            finally:
                self._running = 0
                self._company = len(jobs) > 1 or not queue.empty()
            elapsed_ms = (time.perf_counter() - started) * 1000
            tokens = sum(len(ids) for ids in flat) or 1
            start = 0
            for job in jobs:
                rows = vectors[start : start + len(job.ids)]
                start += len(job.ids)
                if not job.future.done():
                    share = elapsed_ms * sum(len(ids) for ids in job.ids) / tokens
                    job.future.set_result((rows, share))

    def forward(self, inputs: list[list[int]]) -> Any:
        """Run the encoder (blocking): chunks of at most max_batch_size inputs, similar lengths
        together so little is padding; rows come back in the order given."""
        import numpy as np
        import torch

        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        out = np.empty((len(inputs), self.dimensions), dtype=np.float32)
        pad = int(self._tokenizer.pad_token_id or 0)
        with torch.inference_mode():
            for begin in range(0, len(order), self.max_batch_size):
                chunk = order[begin : begin + self.max_batch_size]
                longest = max(len(inputs[i]) for i in chunk)
                ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), longest), dtype=torch.long)
                for row, i in enumerate(chunk):
                    ids[row, : len(inputs[i])] = torch.tensor(inputs[i], dtype=torch.long)
                    mask[row, : len(inputs[i])] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
                self.forward_calls += 1
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
                normed = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[chunk] = normed.cpu().numpy()
        return out
