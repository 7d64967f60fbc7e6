"""Write a tiny Llama-architecture model with deterministic weights: `python -m inference.demo_model PATH`.

Nothing is downloaded. The weights are seeded, so every build is byte-identical; the text it writes
is meaningless but varied (end-of-sequence is never the greedy choice, so `max_tokens` decides the
length). Running it again on a complete directory does nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# Bump when the recipe changes so cached copies are rebuilt.
DEMO_MODEL_REVISION = "6"
MARKER = "demo_model_revision.txt"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# Like real templates it refuses what it cannot render: a conversation may not open with the
# assistant (raise_exception, as Hugging Face templates do).
# Tools follow the Hermes/Qwen format (inference/structured/tools.py parses it): the functions as
# JSON lines in a system block, each call as <tool_call>\n{"name":...,"arguments":{...}}\n</tool_call>
# (calls separated by a newline), each result as a tool message naming its call id.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'assistant' %}"
    "{{ raise_exception('Conversations must not start with an assistant message.') }}{% endif %}"
    "{{ bos_token }}"
    # Hugging Face renders with trim_blocks: a newline right after a block tag is dropped, so
    # newlines there are written as {{ nl }}.
    "{% set nl = '\n' %}"
    "{% if tools %}<|system|>\n# Tools\nYou may call one or more functions. Their signatures:\n<tools>\n"
    # One compact JSON line per function (the context is short: 1024 tokens of one byte each).
    "{% for tool in tools %}{{ (tool['function'] if tool['function'] is defined else tool)"
    " | tojson(separators=(',', ':')) }}{{ nl }}{% endfor %}</tools>\n"
    "To call a function, answer with one block per call:\n"
    '<tool_call>\n{"name":<function-name>,"arguments":<arguments-object>}\n</tool_call>\n'
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "<|tool|>\n<tool_response id=\"{{ message['tool_call_id'] or '' }}\">\n"
    "{{ message['content'] }}\n</tool_response>\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] %}{% if message['content'] %}{{ nl }}{% endif %}"
    "{% for call in message['tool_calls'] %}{% if not loop.first %}{{ nl }}{% endif %}"
    "<tool_call>\n{\"name\":{{ call['function']['name'] | tojson }},\"arguments\":"
    "{% if call['function']['arguments'] is string %}{{ call['function']['arguments'] }}"
    "{% else %}{{ call['function']['arguments'] | tojson }}{% endif %}}\n</tool_call>"
    "{% endfor %}{% endif %}{{ nl }}"
    "{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _build_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    # Byte-level BPE with no merges: one token per byte, any text round-trips.
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([BOS, EOS, PAD])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2)
    )


def _build_model(directory: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_size = 259  # 256 bytes + <s>, </s>, <pad>
    bos_id, eos_id, pad_id = 256, 257, 258
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.25)
        # Larger output weights make logits peaky: fewer near-ties, so greedy is robust to batching noise.
        head = torch.randn(model.lm_head.weight.shape, generator=generator) * 1.5
        # Printable ASCII only wins greedily (a zero row scores 0, below the usual maximum), and EOS never
        # does, so the text stays readable bytes and the length is set by max_tokens.
        # The ByteLevel alphabet is sorted by character, not by byte; map ids back to bytes.
        from tokenizers.pre_tokenizers import ByteLevel

        alphabet = sorted(ByteLevel.alphabet())
        byte_of = _byte_level_inverse()
        for token_id, ch in enumerate(alphabet):
            byte = byte_of[ch]
            if not (32 <= byte <= 126):
                head[token_id] = 0.0
        head[bos_id] = 0.0
        head[eos_id] = 0.0
        head[pad_id] = 0.0
        model.lm_head.weight.copy_(head)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = bos_id
    model.save_pretrained(str(directory), safe_serialization=True)


def _byte_level_inverse() -> dict[str, int]:
    # GPT-2's byte-to-unicode table, inverted.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def build_once(path: str | Path, *, marker: str, revision: str, build: Callable[[Path], object]) -> Path:
    """Run `build(directory)` into a staging directory beside `path` and swap it in, so a reader never
    sees a half-written model; a no-op when a complete copy of this revision is there already."""
    target = Path(path)
    stamp = target / marker
    if stamp.is_file() and stamp.read_text().strip() == revision:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        (staging / marker).write_text(revision + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def build_cli(argv: list[str] | None, module: str, build: Callable[[str], Path]) -> int:
    """`python -m <module> PATH`: build the model there."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write(f"usage: python -m {module} PATH\n")
        return 2
    build(args[0])
    sys.stdout.write(f"model ready at {args[0]}\n")
    return 0


def _build(directory: Path) -> None:
    _build_tokenizer(directory)
    _build_model(directory)


def build_demo_model(path: str | Path) -> Path:
    """Write the demo model to `path` (no-op when a complete copy of this revision is there)."""
    return build_once(path, marker=MARKER, revision=DEMO_MODEL_REVISION, build=_build)


def main(argv: list[str] | None = None) -> int:
    return build_cli(argv, "inference.demo_model", build_demo_model)


if __name__ == "__main__":
    raise SystemExit(main())
