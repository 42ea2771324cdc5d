"""How much memory llama-server needs for a GGUF model at a context size, from the header alone.

The four buffers llama-server reports at start-up (``-lv 4``; docs/engines.md, "Memory: the estimate"):

- **weights**: the tensor data (the ``CPU_Mapped model buffer``): the bytes the tensor table places in the file;
- **KV cache**: 2 (K and V) x layers x (KV heads x head size) x context x bytes per element (f16 by default,
  ``--cache-type-k``/``-v`` change it); one unified cache of ``--ctx-size`` cells whatever ``--parallel`` is;
- **compute**: the attention mask (context x micro-batch, f16) plus the activations of one micro-batch
  (4 bytes x (3 x embedding + 3 x feed-forward) per token), as measured on the tiny models of the tests;
- **output**: the logits of one token per sequence (vocabulary x 4 bytes x ``--parallel``).

Pure arithmetic over numbers read from the header: ``tests/test_gateway.py`` holds it to within 15 % of what
a real llama-server reports for several shapes and context sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_provisioner.core.units import human_size
from model_provisioner.formats.ggml_types import GGML_TYPES
from model_provisioner.formats.gguf import GGUFInfo

#: llama-server's default micro-batch (``--ubatch-size``), capped by the context size
DEFAULT_UBATCH = 512


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a GGUF header."""

    layers: int
    embedding: int
    feed_forward: int
    heads: int
    kv_heads: int
    key_length: int
    value_length: int
    vocab: int
    weights_bytes: int
    ctx_train: int | None

    @classmethod
    def from_gguf(cls, infos: list[GGUFInfo]) -> ModelShape | None:
        """The shape of a model from its header (the first of its split parts carries the keys; the weights are
        every part's tensor data). None when a key the estimate needs is missing (not a llama.cpp LLM)."""
        if not infos:
            return None
        kv = infos[0].kv
        arch = kv.get("general.architecture")
        if not isinstance(arch, str):
            return None

        def number(key: str) -> int | None:
            value = kv.get(f"{arch}.{key}")
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

        layers, embedding, heads = number("block_count"), number("embedding_length"), number("attention.head_count")
        if layers is None or embedding is None or heads is None:
            return None
        # a per-layer array of KV heads (some architectures): the head count is the larger, safe bound
        kv_heads = number("attention.head_count_kv") or heads
        head = embedding // heads
        tokens = kv.get("tokenizer.ggml.tokens")
        vocab = number("vocab_size") or (tokens.get("length") if isinstance(tokens, dict) else None) or 0
        return cls(
            layers=layers,
            embedding=embedding,
            feed_forward=number("feed_forward_length") or 4 * embedding,
            heads=heads,
            kv_heads=kv_heads,
            key_length=number("attention.key_length") or head,
            value_length=number("attention.value_length") or head,
            vocab=int(vocab),
            weights_bytes=sum(info.data_bytes for info in infos),
            ctx_train=number("context_length"),
        )


@dataclass(frozen=True)
class MemoryEstimate:
    ctx: int
    weights: int
    kv_cache: int
    compute: int
    output: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.output

    def describe(self) -> str:
        return (
            f"needs ~{human_size(self.total)} at ctx {self.ctx} (weights {human_size(self.weights)}, KV cache "
            f"{human_size(self.kv_cache)}, compute {human_size(self.compute + self.output)})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "ctx": self.ctx,
            "total_bytes": self.total,
            "weights_bytes": self.weights,
            "kv_cache_bytes": self.kv_cache,
            "compute_bytes": self.compute + self.output,
        }


def element_bytes(cache_type: str) -> float:
    """Bytes per KV cache element of ``--cache-type-k``/``-v`` (f16, q8_0, …); f16 for a name we do not know."""
    for name, block, block_bytes in GGML_TYPES.values():
        if name.lower() == cache_type.lower():
            return block_bytes / block
    return 2.0


def estimate(
    shape: ModelShape,
    ctx: int,
    *,
    parallel: int = 1,
    ubatch: int = DEFAULT_UBATCH,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
) -> MemoryEstimate:
    ctx = max(1, ctx)
    micro_batch = max(1, min(ubatch, ctx))
    per_cell = (
        shape.layers
        * shape.kv_heads
        * (shape.key_length * element_bytes(cache_type_k) + shape.value_length * element_bytes(cache_type_v))
    )
    mask = ctx * micro_batch * 2
    activations = micro_batch * 4 * (3 * shape.embedding + 3 * shape.feed_forward)
    return MemoryEstimate(
        ctx=ctx,
        weights=shape.weights_bytes,
        kv_cache=int(per_cell * ctx),
        compute=mask + activations,
        output=shape.vocab * 4 * max(1, parallel),
    )
