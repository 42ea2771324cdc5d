"""How a set of files is laid out for an engine, decided from their names."""

from __future__ import annotations

from model_provisioner.core.errors import CorruptModel
from model_provisioner.formats.gguf import SPLIT_NAME_RE
from model_provisioner.formats.triton import find_repository_root


def detect_layout(paths: list[str], subject: str) -> str:
    """How a set of files is laid out for an engine, decided from their names."""
    if find_repository_root(paths) is not None:
        return "triton"
    if any(p.endswith(".safetensors") for p in paths) or "config.json" in paths:
        return "transformers"
    if len(paths) == 1:
        return "file"  # one file of any format (GGUF, ONNX, a .bin): laid out like an https:// file
    ggufs = [p for p in paths if p.endswith(".gguf")]
    if ggufs:
        return "gguf-split" if all(SPLIT_NAME_RE.search(p) for p in ggufs) and len(ggufs) > 1 else "gguf-set"
    raise CorruptModel(
        subject,
        "no GGUF, safetensors or Triton repository among the files ("
        + ", ".join(sorted(paths)[:8])
        + (", ..." if len(paths) > 8 else "")
        + ")",
    )
