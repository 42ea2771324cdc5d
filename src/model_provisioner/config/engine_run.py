"""How to run one engine on one model: ``up``'s options, or the ``engine:`` section of an ``engine-provisioner``
config file (a model config plus that section). Errors name the file and the field (docs/engines.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from model_provisioner.config.engines import ENGINE_KINDS, PROVISIONING_MODES, check_types
from model_provisioner.config.modelconfig import ModelConfig, parse_model
from model_provisioner.config.settings import read_mapping
from model_provisioner.core.errors import ConfigError


@dataclass(frozen=True)
class EngineRun:
    """How to run one engine on one model: ``up``'s options, or a config file's ``engine:`` section."""

    kind: str = "llamacpp"
    pool: str = "default"
    replica: str = "0"
    host: str = "127.0.0.1"
    port: int = 0
    binary: str | None = None
    flags: tuple[str, ...] = ()
    ready_timeout_s: float | None = None
    provisioning_mode: str = "binary"
    #: for provisioning_mode: source, a llama.cpp source archive as any ref, its digest and the tree inside it
    source: str | None = None
    source_digest: str | None = None
    source_subdir: str = ""
    env: dict[str, str] = field(default_factory=dict)


_RUN = {
    "kind": str,
    "pool": str,
    "replica": (str, int),
    "host": str,
    "port": int,
    "binary": str,
    "flags": list,
    "ready_timeout_s": (int, float),
    "provisioning_mode": str,
    "source": str,
    "source_digest": str,
    "source_subdir": str,
    "env": dict,
}


def parse_engine_run(path: str, data: Any) -> EngineRun:
    """A model config's ``engine:`` section."""
    values = check_types(path, "engine", data, _RUN)
    if values.get("kind", "llamacpp") not in ENGINE_KINDS:
        raise ConfigError(path, "engine.kind", f"expected one of {', '.join(ENGINE_KINDS)}, got {values['kind']!r}")
    mode = values.get("provisioning_mode", "binary")
    if mode not in PROVISIONING_MODES:
        raise ConfigError(path, "engine.provisioning_mode", f"expected binary or source, got {mode!r}")
    if mode == "source" and not values.get("source"):
        raise ConfigError(path, "engine.source", "provisioning_mode: source needs the source archive's ref")
    if not all(isinstance(f, str) for f in values.get("flags", [])):
        raise ConfigError(path, "engine.flags", "expected a list of strings, e.g. ['--threads', '2']")
    port = values.get("port", 0)
    if not 0 <= port <= 65535:
        raise ConfigError(path, "engine.port", f"expected 0-65535, got {port}")
    values["flags"] = tuple(values.get("flags", ()))
    if "replica" in values:
        values["replica"] = str(values["replica"])
    return EngineRun(**values)


def load_engine_config(path: str | os.PathLike[str]) -> tuple[ModelConfig, EngineRun]:
    """``engine-provisioner --config``: one model (``model_ref``, ``expected_digest``, ``strict_verification``)
    and its ``engine:`` section (``kind``, ``binary``, ``host``, ``port``, ``flags``, ``provisioning_mode``…)."""
    path = os.fspath(path)
    data = read_mapping(path)
    section = data.get("engine")
    if not isinstance(section, dict):
        raise ConfigError(path, "engine", "expected a mapping: kind (llamacpp or triton), binary, host, port, flags…")
    run = parse_engine_run(path, section)
    return parse_model(path, {k: v for k, v in data.items() if k != "engine"}, ""), run
