"""An adapter over vLLM's AsyncLLM (GPU nodes). vLLM is an optional extra: nothing here imports it
until the engine starts, so the module (and the rest of the service) imports without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.engine.base import Engine, EngineError, EngineOutput, EngineRequest, SamplingParams, TokenLogprob
from wire.prompt import PromptRejected

if TYPE_CHECKING:
    from inference.config import EngineOptions

_FINISH = {"stop": "stop", "length": "length", "abort": "aborted"}


class VLLMEngine(Engine):
    def __init__(self, *, model_path: str | Path, options: EngineOptions) -> None:
        self.model_path = Path(model_path)
        self.options = options
        self.max_batch_size = options.max_batch_size
        self.context_length = 0
        self._llm: Any = None
        self._tokenizer: Any = None
        self._running: set[str] = set()

    async def start(self) -> None:
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:  # pragma: no cover - depends on the image
            raise EngineError("engine 'vllm' needs the vllm package (pip install 'mm-orch[vllm]')") from exc
        args: dict[str, Any] = {
            "model": str(self.model_path),
            "max_num_seqs": self.options.max_batch_size,
            "dtype": self.options.dtype if self.options.dtype != "float32" else "auto",
            # The node's fair scheduler orders tenants; vLLM orders by the priority it is handed.
            "scheduling_policy": "priority",
        }
        if self.options.device.startswith("cuda:"):
            args["device"] = "cuda"
        args.update(self.options.vllm_args)
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        self._tokenizer = await self._llm.get_tokenizer()
        self.vocab_size = int(self._llm.model_config.get_vocab_size())
        self.context_length = int(self._llm.model_config.max_model_len)

    async def stop(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def healthy(self) -> bool:
        return self._llm is not None and not getattr(self._llm, "errored", False)

    def running(self) -> int:
        return len(self._running)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def token_text(self, token_id: int) -> str:
        return str(self._tokenizer.decode([token_id], skip_special_tokens=False))

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text)
        return ids

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        extra: dict[str, Any] = {"tools": list(tools)} if tools else {}
        try:
            text = self._tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False, **extra
            )
        except Exception as exc:  # the template refused the client's messages
            raise PromptRejected(str(exc) or type(exc).__name__) from exc
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False)
        return ids

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        self._running.add(request.request_id)
        finished = False
        produced: dict[int, int] = {}
        done: set[int] = set()
        started: set[int] = set()
        prompt_lps: list[TokenLogprob | None] | None = None
        n = request.params.n
        try:
            async for out in self._llm.generate(
                {"prompt_token_ids": request.prompt_ids},
                sampling_params(request.params),
                request.request_id,
                priority=-request.priority,  # vLLM serves lower values first; ours are higher-first
            ):
                # The prompt's logprobs come once (DELTA); each choice gets them on its first output.
                prompt_lps = prompt_lps or _prompt_logprobs(getattr(out, "prompt_logprobs", None), request)
                for completion in out.outputs:
                    index = int(getattr(completion, "index", 0))
                    if index in done:
                        continue
                    if request.params.max_tokens == 0:  # the prompt scored: nothing generated is kept
                        done.add(index)
                        yield EngineOutput(
                            text="", finished=True, finish_reason="length", index=index, prompt_logprobs=prompt_lps
                        )
                        continue
                    produced[index] = produced.get(index, 0) + len(completion.token_ids)
                    ended = completion.finish_reason is not None or (out.finished and n == 1)
                    if ended:
                        done.add(index)
                    reason = _FINISH.get(completion.finish_reason or "", "stop") if ended else None
                    yield EngineOutput(
                        text=completion.text,
                        token_ids=list(completion.token_ids),
                        finished=ended,
                        finish_reason=reason,  # type: ignore[arg-type]
                        completion_tokens=produced[index],
                        index=index,
                        logprobs=_logprobs(completion, request.params.logprobs),
                        prompt_logprobs=None if index in started else prompt_lps,
                    )
                    started.add(index)
                if len(done) >= n or out.finished:
                    finished = True
                    if len(done) < n:  # the request ended without every sequence: treat as aborted
                        yield EngineOutput(text="", finished=True, finish_reason="aborted", index=-1)
                    return
        finally:
            self._running.discard(request.request_id)
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        if self._llm is None:
            return
        import asyncio

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self._llm.abort(request_id))


def sampling_params(p: SamplingParams) -> Any:
    """vLLM's SamplingParams for ours: every control passes through, none is dropped."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.sampling_params import RequestOutputKind

    kwargs: dict[str, Any] = {
        "n": p.n,
        "max_tokens": max(1, p.max_tokens),  # 0 (echo scoring): one token made, then dropped
        "temperature": p.temperature,
        "top_p": p.top_p,
        "seed": p.seed,
        "stop": list(p.stop) or None,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "logit_bias": dict(p.logit_bias) or None,
        "logprobs": p.logprobs,
        "prompt_logprobs": p.prompt_logprobs,
        "output_kind": RequestOutputKind.DELTA,
    }
    if p.guided:
        try:  # vLLM >= 0.10.2
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(**p.guided)
        except ImportError:  # older vLLM
            from vllm.sampling_params import GuidedDecodingParams

            kwargs["guided_decoding"] = GuidedDecodingParams(**p.guided)
    return VLLMSamplingParams(**kwargs)


def _entry(token: int, position: Any, top: int) -> TokenLogprob:
    """One position of vLLM's logprobs ({token id: Logprob(logprob, rank, ...)}) in our shape."""
    chosen = position.get(token)
    ranked = sorted(
        ((tid, lp) for tid, lp in position.items() if getattr(lp, "rank", None) is not None and lp.rank <= top),
        key=lambda item: item[1].rank,
    )
    return TokenLogprob(
        token_id=token,
        logprob=max(-9999.0, float(chosen.logprob)) if chosen is not None else -9999.0,
        top=tuple((int(tid), max(-9999.0, float(lp.logprob))) for tid, lp in ranked[:top]),
    )


def _logprobs(completion: Any, top: int | None) -> list[TokenLogprob] | None:
    positions = getattr(completion, "logprobs", None)
    if top is None or positions is None:
        return None
    return [_entry(int(t), pos, top) for t, pos in zip(completion.token_ids, positions, strict=False)]


def _prompt_logprobs(positions: Any, request: EngineRequest) -> list[TokenLogprob | None] | None:
    top = request.params.prompt_logprobs
    if top is None or positions is None:
        return None
    return [
        None if pos is None else _entry(int(t), pos, top) for t, pos in zip(request.prompt_ids, positions, strict=False)
    ]
