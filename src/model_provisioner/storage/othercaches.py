"""Caches other tools keep on this machine (huggingface_hub's, Ollama's): where they are, and a blob with a
given sha256 already in one of them (adopted by hard link instead of downloaded, after it is verified)."""

from __future__ import annotations

import os
from pathlib import Path


def default_hf_cache() -> Path:
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env)
    hf_home = os.environ.get("HF_HOME")
    return Path(hf_home) / "hub" if hf_home else Path.home() / ".cache" / "huggingface" / "hub"


def default_ollama_models() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env) if env else Path.home() / ".ollama" / "models"


def find_adoptable(sha_hex: str) -> Path | None:
    """A blob with this sha256 already on disk in a huggingface_hub or Ollama cache (opt-in automatic step)."""
    hub = default_hf_cache()
    if hub.is_dir():
        for candidate in hub.glob(f"models--*/blobs/{sha_hex}"):
            if candidate.is_file():
                return candidate
    ollama = default_ollama_models() / "blobs" / f"sha256-{sha_hex}"
    return ollama if ollama.is_file() else None
