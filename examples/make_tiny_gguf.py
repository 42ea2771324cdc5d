#!/usr/bin/env python3
"""Write a tiny but real GGUF model with the ``gguf`` package's writer.

    python examples/make_tiny_gguf.py examples/header-only-llama.gguf

It has an architecture, a context length, a tokenizer model with a vocabulary, a file type and real
tensors, so every metadata path of the provisioner (ctx_max, quantization, tokenizer) is exercised.
The test suite uses ``write_tiny_gguf`` to make models of any size.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write_tiny_gguf(
    path: str | Path,
    *,
    arch: str = "llama",
    name: str = "tiny-llama",
    context_length: int = 4096,
    extra_tensor_bytes: int = 0,
    split: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a GGUF file. ``extra_tensor_bytes`` adds an F32 tensor of about that size (for big files);
    ``split=(index, count, total_tensors)`` writes llama.cpp split metadata."""
    import gguf
    import numpy as np

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(context_length)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "hello", "world"])
    writer.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if split is not None:
        index, count, total = split
        writer.add_uint16("split.no", index)
        writer.add_uint16("split.count", count)
        writer.add_int32("split.tensors.count", total)
    rng = np.random.default_rng(seed)
    writer.add_tensor("token_embd.weight", rng.standard_normal((5, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    if extra_tensor_bytes > 0:
        n = max(1, extra_tensor_bytes // 4)
        writer.add_tensor("blob.weight", rng.standard_normal(n, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(Path(__file__).with_name("header-only-llama.gguf")))
    args = parser.parse_args()
    print(write_tiny_gguf(args.out))


if __name__ == "__main__":
    main()
