"""Engine handoff files and provenance (docs/verification.md, "Handoff and provenance").

``<out>/.runtime/engines/<engine>.json`` tells an engine what to load; it is written atomically so an
engine never reads half a file. ``<out>/.runtime/provenance/models.jsonl`` gets one line per run.
Neither ever holds a secret: ids carry none, and the source goes through the redaction function.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.config.modelconfig import load_model_configs
from model_provisioner.core.errors import InvalidInput
from model_provisioner.core.redact import redact_text
from model_provisioner.obs.audit import correlation_id as current_correlation_id

if TYPE_CHECKING:
    from model_provisioner.api.provisioner import ModelProvisioner
    from model_provisioner.verify.results import ResolvedModel

#: which engines can load which formats
ENGINE_FORMATS: dict[str, tuple[str, ...]] = {
    "llamacpp": ("gguf",),
    "vllm": ("transformers", "safetensors"),
    "tgi": ("transformers", "safetensors"),
    "triton": ("triton",),
}
DEFAULT_ENGINE = {"gguf": "llamacpp", "transformers": "vllm", "safetensors": "vllm", "triton": "triton"}


def choose_engine(resolved: ResolvedModel, engine: str | None) -> str:
    if engine is None:
        engine = DEFAULT_ENGINE.get(resolved.format)
        if engine is None:
            raise InvalidInput(
                f"{resolved.id} is in format {resolved.format!r}; choose the engine explicitly with --engine"
            )
    if engine not in ENGINE_FORMATS:
        raise InvalidInput(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_FORMATS)}")
    if resolved.format not in ENGINE_FORMATS[engine]:
        raise InvalidInput(
            f"engine {engine} cannot load {resolved.id} (format {resolved.format}); "
            f"it needs {' or '.join(ENGINE_FORMATS[engine])}"
        )
    return engine


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def trust_remote_code(resolved: ResolvedModel, allow_remote_code: bool) -> bool:
    """Custom code runs only when the repo needs it AND the settings in force now allow it: decided each time a
    handoff is written, never remembered from the day the repo was downloaded."""
    return bool(resolved.metadata.get("trust_remote_code")) and allow_remote_code


def write_engine_handoff(
    out_dir: str | os.PathLike[str],
    engine: str,
    resolved: ResolvedModel,
    *,
    allow_remote_code: bool = False,
    running: dict[str, Any] | None = None,
) -> Path:
    """Write ``<out>/.runtime/engines/<engine>.json`` for ``resolved``; returns its path.

    ``allow_remote_code`` is the operator's setting in force now (``Settings.allow_remote_code``); ``running``
    adds, additively, what a started engine is (url, pid, pool, engine version, state…)."""
    engine = choose_engine(resolved, engine)
    meta = resolved.metadata
    metadata: dict[str, Any] = {
        "size_bytes": resolved.size_bytes,
        "digest": resolved.digest,
        "format": resolved.format,
        "verification": resolved.verification,
    }
    for key in (
        "ctx_max",
        "architecture",
        "quantization",
        "name",
        "tokenizer_model",
        "split",
        "trust_remote_code",
    ):
        if meta.get(key) is not None:
            metadata[key] = meta[key]
    payload: dict[str, Any] = {
        "model": {"id": resolved.id, "path": str(resolved.local_path)},
        "metadata": metadata,
    }
    if engine in ("vllm", "tgi"):
        payload["model"]["trust_remote_code"] = trust_remote_code(resolved, allow_remote_code)
        for key in ("revision", "repo_digest", "model_type", "architectures"):
            if meta.get(key) is not None:
                metadata[key] = meta[key]
    if engine == "triton":
        payload["model_repository"] = str(resolved.local_path)
        payload["models"] = meta.get("models", [])
        metadata["repo_digest"] = meta.get("repo_digest", resolved.digest)
    payload.update(running or {})
    path = Path(out_dir) / ".runtime" / "engines" / f"{engine}.json"
    atomic_write_json(path, payload)
    return path


def append_provenance(
    out_dir: str | os.PathLike[str],
    resolved: ResolvedModel,
    *,
    source: str,
    duration_ms: int,
    bytes_fetched: int = 0,
    correlation_id: str | None = None,
    policy_label: str | None = None,
    remote_code: bool | None = None,
) -> Path:
    """Append one provenance line for this run to ``<out>/.runtime/provenance/models.jsonl``.

    ``remote_code`` is the trust_remote_code decision the handoff carried (None: not a transformers handoff)."""
    record = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "model_id": resolved.id,
        "path": str(resolved.local_path),
        "digest": resolved.digest,
        "size_bytes": resolved.size_bytes,
        "verification": resolved.verification,
        "lifecycle": str(resolved.lifecycle),
        "from_cache": resolved.from_cache,
        "source": redact_text(source),
        "bytes_fetched": bytes_fetched,
        "duration_ms": duration_ms,
        "correlation_id": correlation_id or current_correlation_id(),
        "policy_label": policy_label,
    }
    if remote_code is not None:
        record["trust_remote_code"] = remote_code
    path = Path(out_dir) / ".runtime" / "provenance" / "models.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # whole lines even with many writers
        os.write(fd, line)
    finally:
        os.close(fd)
    return path


def provision_and_handoff(
    provisioner: ModelProvisioner,
    ref: str,
    out_dir: str | os.PathLike[str],
    *,
    expected_digest: str | None = None,
    strict: bool | None = None,
    engine: str | None = None,
    correlation_id: str | None = None,
    **ensure_options: Any,
) -> tuple[ResolvedModel, Path]:
    """ensure + handoff + provenance: what ``ensure --handoff-dir`` and ``provision`` do."""
    start = time.monotonic()
    resolved = provisioner.ensure_present(ref, expected_digest, strict=strict, **ensure_options)
    chosen = choose_engine(resolved, engine)
    took = int((time.monotonic() - start) * 1000)
    return resolved, _hand_off(provisioner, out_dir, chosen, resolved, took, correlation_id)


def _hand_off(
    provisioner: ModelProvisioner,
    out_dir: str | os.PathLike[str],
    engine: str,
    resolved: ResolvedModel,
    duration_ms: int,
    correlation_id: str | None,
) -> Path:
    allowed = provisioner.settings.allow_remote_code
    handoff = write_engine_handoff(out_dir, engine, resolved, allow_remote_code=allowed)
    append_provenance(
        out_dir,
        resolved,
        source=str(resolved.metadata.get("source") or resolved.id),
        duration_ms=duration_ms,
        bytes_fetched=resolved.bytes_fetched,
        correlation_id=correlation_id,
        policy_label=provisioner.settings.policy.label,
        remote_code=trust_remote_code(resolved, allowed) if engine in ("vllm", "tgi") else None,
    )
    return handoff


def provision_config(
    config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    provisioner: ModelProvisioner | None = None,
    *,
    correlation_id: str | None = None,
) -> list[tuple[ResolvedModel, Path]]:
    """Every model of a model config (one, or a ``models:`` list): ensure them all, then write each handoff
    and provenance line. Two models that would share one engine's handoff file are refused before any
    handoff is written."""

    configs = load_model_configs(config_path)
    owned = provisioner is None
    prov = provisioner or ModelProvisioner()
    try:
        ensured: list[tuple[ResolvedModel, str, int]] = []
        for config in configs:
            start = time.monotonic()
            resolved = prov.ensure_present(
                config.model_ref.id,
                str(config.expected_digest) if config.expected_digest else None,
                strict=config.strict,
            )
            took = int((time.monotonic() - start) * 1000)
            ensured.append((resolved, choose_engine(resolved, config.engine), took))
        engines = [engine for _, engine, _ in ensured]
        shared = next((engine for engine in engines if engines.count(engine) > 1), None)
        if shared is not None:
            raise InvalidInput(
                f"config {os.fspath(config_path)}: two models would share the handoff "
                f"{Path(out_dir) / '.runtime' / 'engines' / (shared + '.json')}; give them different engines or "
                "provision them into separate --out directories"
            )
        return [
            (resolved, _hand_off(prov, out_dir, engine, resolved, took, correlation_id))
            for resolved, engine, took in ensured
        ]
    finally:
        if owned:
            prov.close()


def provision_from_config_to_default_handoff(
    config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    provisioner: ModelProvisioner | None = None,
    *,
    correlation_id: str | None = None,
) -> ResolvedModel:
    """Read a model config (YAML/JSON), ensure the model and write the engine handoff + provenance (the first
    model of a list is returned; ``provision_config`` returns them all)."""
    return provision_config(config_path, out_dir, provisioner, correlation_id=correlation_id)[0][0]
