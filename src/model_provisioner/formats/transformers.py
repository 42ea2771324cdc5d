"""vLLM/TGI (transformers) repositories: config metadata, custom-code detection, shard completeness."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import CorruptModel, NotFound

CTX_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def shards_from_index(index_bytes: bytes, subject: str) -> set[str]:
    try:
        index = json.loads(index_bytes)
        weight_map = index["weight_map"]
        return {str(v) for v in weight_map.values()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise CorruptModel(subject, "model.safetensors.index.json has no valid weight_map") from None


def check_complete(shards: set[str], selected: Iterable[str], in_repo: Iterable[str], subject: str) -> None:
    """Every shard the index names must be fetched; say whether a missing one is absent or filtered out."""
    selected_set = set(selected)
    if not any(p.endswith(".safetensors") for p in selected_set):
        return  # no weights asked for (e.g. --include '*.json'): nothing to be complete
    missing = sorted(shards - selected_set)
    absent = [m for m in missing if m not in set(in_repo)]
    if absent:
        raise NotFound(
            f"{subject}: model.safetensors.index.json references shards missing from the repository: "
            f"{', '.join(absent)}"
        )
    if missing:
        raise NotFound(
            f"{subject}: shards {', '.join(missing)} are named by model.safetensors.index.json but left out by "
            "--include/--exclude; widen the filters"
        )


def summarize(repo_dir: Path, paths: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": "transformers", "files": len(paths)}
    config_path = repo_dir / "config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError, RecursionError):
            raise CorruptModel(str(config_path), "config.json is not valid JSON (or nested too deeply)") from None
    for key in ("model_type", "architectures", "torch_dtype"):
        if key in config:
            meta[key] = config[key]
    for key in CTX_KEYS:
        if isinstance(config.get(key), int):
            meta["ctx_max"] = config[key]
            break
    custom_code = sorted(p for p in paths if p.endswith(".py"))
    meta["trust_remote_code"] = bool(config.get("auto_map")) or bool(custom_code)
    if custom_code:
        meta["custom_code_files"] = custom_code
    return meta
