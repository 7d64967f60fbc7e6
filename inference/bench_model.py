"""Write a realistic-size Llama-architecture model with random weights: `python -m inference.bench_model PATH`.

SmolLM-135M's shape (hidden 576, 30 layers, 9 heads, 3 key-value heads, intermediate 1536, a
49,152-token vocabulary, tied embeddings; about 135M parameters), so benchmarks measure an engine
at a size where the weights, not Python, set the pace. Nothing is downloaded: the tokenizer is a
byte-level BPE trained here on the Python standard library's own sources, the weights are seeded.
The text it writes is meaningless; end-of-sequence is never the greedy choice, so `max_tokens`
decides the length. Running it again on a complete directory does nothing.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from inference.demo_model import BOS, CHAT_TEMPLATE, EOS, PAD, build_cli, build_once

# Bump when the recipe changes so cached copies are rebuilt.
BENCH_MODEL_REVISION = "1"
MARKER = "bench_model_revision.txt"

VOCAB_SIZE = 49_152
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 576, 1536, 30, 9, 3
# Enough text for the trainer to find every merge of the vocabulary.
_CORPUS_BYTES = 24 * 1024 * 1024


def _corpus() -> Iterator[str]:
    """The standard library's Python sources in a fixed order (fixed by the Python version)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    budget = _CORPUS_BYTES
    for path in sorted(root.rglob("*.py")):
        if budget <= 0 or "site-packages" in path.parts:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        budget -= len(text)
        yield text


def _build_tokenizer(directory: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2)
    )
    return int(tokenizer.get_vocab_size())


def _build_model(directory: Path, *, trained_vocab: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # The special tokens come first in the trained vocabulary.
    bos_id, eos_id, pad_id = 0, 1, 2
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                # Scaled like a trained model's initialisation, so activations stay finite over 30 layers.
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        # Tied embeddings: a zero row scores 0, below the usual maximum over 49,152 random rows, so
        # special tokens and ids the trained vocabulary did not fill never win greedily.
        embed = model.model.embed_tokens.weight
        for token_id in (bos_id, eos_id, pad_id, *range(trained_vocab, VOCAB_SIZE)):
            embed[token_id] = 0.0
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = bos_id
    model.save_pretrained(str(directory), safe_serialization=True)


def _build(directory: Path) -> None:
    _build_model(directory, trained_vocab=_build_tokenizer(directory))


def build_bench_model(path: str | Path) -> Path:
    """Write the model to `path` (no-op when a complete copy of this revision is there)."""
    return build_once(path, marker=MARKER, revision=BENCH_MODEL_REVISION, build=_build)


def main(argv: list[str] | None = None) -> int:
    return build_cli(argv, "inference.bench_model", build_bench_model)


if __name__ == "__main__":
    raise SystemExit(main())
