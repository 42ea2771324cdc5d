"""Memory admission before an engine loads a model (docs/engines.md, "Never out of memory").

The estimate (``formats/memory.py``) is read from the verified file's header, opened by the cache's rules (no
symbolic link followed, checked after open), at the context and slots the engine will run with (the same
merged flags ``llamacpp.server_flags`` gives the engine). The decision is arithmetic over four numbers:
what the model needs, the machine's available memory (``MemAvailable``), what the loaded models hold, and the
reserve; plus the operator's optional limit on the gateway's models together.

``MemAvailable`` counts the page cache as available, and a loaded model's weights are mapped from its file
(page cache): the weights of loaded models are subtracted from it again; their KV cache and compute buffers
are anonymous memory, already missing from it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from model_provisioner.config.engines import LlamaCppSettings
from model_provisioner.config.gateway import GatewaySettings
from model_provisioner.core.errors import InsufficientMemory
from model_provisioner.core.units import human_size
from model_provisioner.engines.llamacpp import options, server_flags
from model_provisioner.formats.gguf import read_gguf_fd
from model_provisioner.formats.memory import MemoryEstimate, ModelShape, estimate
from model_provisioner.storage.safefs import open_in_cache
from model_provisioner.verify.results import ResolvedModel


def model_estimate(resolved: ResolvedModel, flags: Sequence[str], settings: LlamaCppSettings) -> MemoryEstimate | None:
    """What llama-server will need for ``resolved`` run with ``flags`` (None: not a GGUF LLM we can size)."""
    if resolved.format != "gguf" or not resolved.local_path.is_file():
        return None
    return file_estimate(resolved.local_path, resolved.id, resolved.size_bytes, flags, settings)


def file_estimate(
    path: str | os.PathLike[str], subject: str, size_bytes: int, flags: Sequence[str], settings: LlamaCppSettings
) -> MemoryEstimate | None:
    """The same for a GGUF file (``inspect``): its header read without following a link planted at ``path``."""
    fd = open_in_cache(path, os.O_RDONLY, single_link=False)
    try:
        info = read_gguf_fd(fd, subject)
    finally:
        os.close(fd)
    shape = ModelShape.from_gguf([info])
    if shape is None:
        return None
    split = info.kv.get("split.count")
    if isinstance(split, int) and split > 1:  # the other parts' tensors: bounded by the set's size
        shape = replace(shape, weights_bytes=max(shape.weights_bytes, size_bytes))
    return estimate_for_flags(shape, flags, settings)


def estimate_for_flags(shape: ModelShape, flags: Sequence[str], settings: LlamaCppSettings) -> MemoryEstimate:
    merged = dict(options(server_flags(flags, shape.ctx_train, settings)))

    def number(name: str, default: int) -> int:
        value = merged.get(name)
        return int(value) if value is not None and value.isdigit() and int(value) > 0 else default

    return estimate(
        shape,
        number("--ctx-size", shape.ctx_train or settings.max_ctx_size),
        parallel=number("--parallel", 1),
        ubatch=number("--ubatch-size", 512),
        cache_type_k=merged.get("--cache-type-k") or "f16",
        cache_type_v=merged.get("--cache-type-v") or "f16",
    )


def available_memory() -> int:
    """``MemAvailable`` of /proc/meminfo (bytes); the physical memory where it is missing."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass(frozen=True)
class Loaded:
    """A loaded model as admission sees it."""

    name: str
    estimate: MemoryEstimate
    idle: bool


def room(settings: GatewaySettings, available: int, loaded: Sequence[Loaded]) -> int:
    """The bytes a new model may need, given what is loaded."""
    by_machine = available - settings.memory_reserve_bytes - sum(m.estimate.weights for m in loaded)
    if not settings.memory_limit_bytes:
        return by_machine
    return min(by_machine, settings.memory_limit_bytes - sum(m.estimate.total for m in loaded))


def to_evict(
    name: str, need: MemoryEstimate, settings: GatewaySettings, available: int, loaded: Sequence[Loaded]
) -> list[str]:
    """The idle models (least recently used first, as ``loaded`` is ordered) to unload so ``need`` fits;
    ``InsufficientMemory`` naming both numbers when even unloading every idle one would not make room."""
    victims: list[str] = []
    remaining = list(loaded)
    for candidate in [m for m in loaded if m.idle]:
        if need.total <= room(settings, available, remaining):
            return victims
        victims.append(candidate.name)
        remaining.remove(candidate)
    free = room(settings, available, remaining)
    if need.total <= free:
        return victims
    limit = (
        f"the gateway's memory_limit {human_size(settings.memory_limit_bytes)}, " if settings.memory_limit_bytes else ""
    )
    busy = len(remaining)
    raise InsufficientMemory(
        f"model {name!r} {need.describe()}, but only {human_size(max(0, free))} is free for it ({limit}"
        f"{human_size(available)} available less the reserve {human_size(settings.memory_reserve_bytes)}"
        f"{f' and {busy} busy loaded model(s)' if busy else ''}); retry when a model is idle, lower its "
        "--ctx-size, or lower gateway.memory_reserve"
    )
