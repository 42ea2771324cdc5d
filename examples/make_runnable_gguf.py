#!/usr/bin/env python3
"""Write a tiny llama GGUF that llama.cpp really loads and runs: random weights (2 layers, width 64) and a
real tokenizer vocabulary copied from one of llama.cpp's ``ggml-vocab-*.gguf`` files.

    python examples/make_runnable_gguf.py VOCAB.gguf OUT.gguf [--tied]

``examples/tiny-runnable-llama.gguf`` is ``--tied`` with the sdist's ``ggml-vocab-llama-spm.gguf``.

The vocabulary files ship in the llama-cpp-python sdist (``vendor/llama.cpp/models/``); the test suite
takes one from there. The text it generates is noise, but every token is a real token of the vocabulary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
)


def _field_value(field: Any) -> Any:
    import gguf

    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        inner = field.types[1]
        if inner == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    return field.parts[field.data[0]].tolist()[0]


def write_runnable_gguf(
    vocab: str | Path,
    path: str | Path,
    *,
    width: int = 64,
    layers: int = 2,
    seed: int = 0,
    tied: bool = False,
    heads: int = 4,
    kv_heads: int | None = None,
    context: int = 512,
    chat_template: str | None = None,
) -> Path:
    """``tied``: no ``output.weight``; llama.cpp projects onto the vocabulary with the token embeddings (half
    the size: what the shipped example uses). ``kv_heads`` below ``heads``: grouped-query attention."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(vocab))
    fields = {name: reader.fields[name] for name in TOKENIZER_KEYS if name in reader.fields}
    tokens = _field_value(fields["tokenizer.ggml.tokens"])
    n_vocab, ff = len(tokens), width * 2
    kv_heads = heads if kv_heads is None else kv_heads
    kv_width = width // heads * kv_heads
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-runnable-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(width // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name, field in fields.items():
        value = _field_value(field)
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(name, value)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, value)
        elif kind == gguf.GGUFValueType.BOOL:
            writer.add_bool(name, bool(value))
        else:
            writer.add_uint32(name, int(value))
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    writer.add_tensor("token_embd.weight", weights(n_vocab, width))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weights(width, width))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weights(kv_width, width))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights(kv_width, width))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights(width, width))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(width, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(ff, width))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(ff, width))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(width, ff))
    writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
    if not tied:
        writer.add_tensor("output.weight", weights(n_vocab, width))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vocab", help="a ggml-vocab-*.gguf file (llama.cpp's models/ directory)")
    parser.add_argument("out")
    parser.add_argument("--tied", action="store_true", help="no output.weight: the token embeddings project back")
    args = parser.parse_args()
    print(write_runnable_gguf(args.vocab, args.out, tied=args.tied))


if __name__ == "__main__":
    main()
