#!/usr/bin/env python3
"""The safety lint's cost on a real-size GGUF header (issue 28, "Measured"). Run by hand:

    python bench/bench_lint.py [--rounds 21]

Writes (with ``gguf``) the tensor table of a 7B-class llama at Q4_K (32 layers, width 4096, feed-forward 11008,
vocabulary 32000: 291 tensors) and a chat template, then extends the file to its full size as a sparse file: the
lint must read the header alone, so the data (3.8 GB) is never there to read. Times ``read_gguf(tensors=True)`` +
``lint_gguf`` (header, tensor table, template in Jinja's sandbox), and the header read alone as ``up`` did before.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

TEMPLATE = (
    "{%- set ns = namespace(system='') -%}{%- for m in messages -%}{%- if m['role'] == 'system' -%}"
    "{%- set ns.system = m['content'] -%}{%- else -%}<|{{ m['role'] }}|>{{ m['content'] | trim }}</s>"
    "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def write_7b_header(path: Path) -> int:
    import gguf
    import numpy as np

    width, ff, layers, vocab = 4096, 11008, 32, 32000
    q4k = gguf.GGMLQuantizationType.Q4_K
    block, block_bytes = gguf.GGML_QUANT_SIZES[q4k]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(32)
    writer.add_context_length(4096)
    writer.add_chat_template(TEMPLATE)

    data = 0

    def tensor(name: str, *shape: int, quant: bool = True) -> None:
        nonlocal data
        elements = 1
        for dim in shape:
            elements *= dim
        dtype, nbytes, raw = (
            (np.uint8, elements // block * block_bytes, q4k) if quant else (np.float32, elements * 4, None)
        )
        # numpy order (rows, columns); a quantized row is given in bytes, as the writer takes it
        byte_shape = [*shape[:-1], shape[-1] // block * block_bytes] if quant else list(shape)
        writer.add_tensor_info(name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=raw)
        data += (nbytes + 31) // 32 * 32  # each tensor's data padded to the alignment

    tensor("token_embd.weight", vocab, width)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", width, quant=False)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{name}.weight", width, width)
        tensor(f"blk.{i}.ffn_norm.weight", width, quant=False)
        tensor(f"blk.{i}.ffn_gate.weight", ff, width)
        tensor(f"blk.{i}.ffn_up.weight", ff, width)
        tensor(f"blk.{i}.ffn_down.weight", width, ff)
    tensor("output_norm.weight", width, quant=False)
    tensor("output.weight", vocab, width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header = path.stat().st_size
    with open(path, "rb+") as fh:  # the data section, sparse: nothing on disk, nothing to read
        fh.truncate((header + 31) // 32 * 32 + data)
    return header


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    from model_provisioner.formats.gguf import read_gguf
    from model_provisioner.formats.gguf_lint import lint_gguf

    with tempfile.TemporaryDirectory(prefix="mprov-bench-lint-") as tmp:
        path = Path(tmp) / "llama-7b-q4_k.gguf"
        header = write_7b_header(path)
        probe = path.stat().st_size
        lint: list[float] = []
        plain: list[float] = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            report = lint_gguf(read_gguf(path, tensors=True))
            lint.append(time.perf_counter() - started)
            started = time.perf_counter()
            read_gguf(path)
            plain.append(time.perf_counter() - started)
        assert report.ok, report.problems
        on_disk = path.stat().st_blocks * 512
        print(
            f"7B-class Q4_K GGUF: {report.tensors} tensors, header {header} bytes, file {probe / 1e9:.2f} GB "
            f"({on_disk} bytes on disk: sparse), {args.rounds} rounds: lint (header + tensor table + template) "
            f"{statistics.median(lint) * 1000:.2f} ms [{min(lint) * 1000:.2f}-{max(lint) * 1000:.2f}], "
            f"header read alone {statistics.median(plain) * 1000:.2f} ms"
        )


if __name__ == "__main__":
    main()
