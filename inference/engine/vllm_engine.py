"""An adapter over vLLM's AsyncLLM (GPU nodes). vLLM is an optional extra: nothing here imports it
until the engine starts, so the module (and the rest of the service) imports without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.engine.base import Engine, EngineError, EngineOutput, EngineRequest
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
        self.context_length = int(self._llm.model_config.max_model_len)

    async def stop(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def healthy(self) -> bool:
        return self._llm is not None and not getattr(self._llm, "errored", False)

    def running(self) -> int:
        return len(self._running)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text)
        return ids

    def encode_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        try:
            text = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # the template refused the client's messages
            raise PromptRejected(str(exc) or type(exc).__name__) from exc
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False)
        return ids

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        p = request.params
        sampling = SamplingParams(
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            stop=list(p.stop) or None,
            output_kind=RequestOutputKind.DELTA,
        )
        self._running.add(request.request_id)
        finished = False
        generated = 0
        try:
            async for out in self._llm.generate(
                {"prompt_token_ids": request.prompt_ids},
                sampling,
                request.request_id,
                priority=-request.priority,  # vLLM serves lower values first; ours are higher-first
            ):
                completion = out.outputs[0]
                generated += len(completion.token_ids)
                reason = _FINISH.get(completion.finish_reason or "", "stop") if out.finished else None
                finished = out.finished
                yield EngineOutput(
                    text=completion.text,
                    token_ids=list(completion.token_ids),
                    finished=out.finished,
                    finish_reason=reason,  # type: ignore[arg-type]
                    completion_tokens=generated,
                )
                if finished:
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
