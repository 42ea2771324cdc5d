"""Settings (how the provisioner runs) and model config files (what to provision).

Settings come from, in increasing priority: defaults, a settings file (YAML or JSON, path in
``MODEL_PROVISIONER_SETTINGS``), a few environment variables, explicit arguments. Only the handful of
variables users expect are read from the environment; everything else lives in the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .digest import Digest
from .errors import ConfigError, InvalidDigest, InvalidModelRef
from .refs import ModelRef, parse

ENV_CACHE = "MODEL_PROVISIONER_CACHE"
ENV_OFFLINE = "MODEL_PROVISIONER_OFFLINE"
ENV_SETTINGS = "MODEL_PROVISIONER_SETTINGS"
ENGINES = ("llamacpp", "vllm", "tgi", "triton")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def default_cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/models"))


@dataclass(frozen=True)
class Settings:
    cache_dir: Path = field(default_factory=default_cache_dir)
    offline: bool = False
    #: global limit on concurrent fetches (and first-time hashing) across threads and processes
    max_parallel_fetches: int = 4
    #: how long a waiter waits for another process fetching the same model
    lock_timeout_s: float = 6 * 3600.0
    #: last_used timestamps are written at most this often per entry (keeps the warm path read-only)
    touch_interval_ms: int = 1000

    def __post_init__(self) -> None:
        if self.max_parallel_fetches < 1:
            raise ConfigError("settings", "max_parallel_fetches", "must be at least 1")
        if self.lock_timeout_s <= 0:
            raise ConfigError("settings", "lock_timeout_s", "must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        settings_file = env.get(ENV_SETTINGS)
        if settings_file:
            values.update(_load_settings_file(settings_file))
        if env.get(ENV_CACHE):
            values["cache_dir"] = env[ENV_CACHE]
        if _truthy(env.get(ENV_OFFLINE)) or _truthy(env.get("HF_HUB_OFFLINE")):
            values["offline"] = True
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "cache_dir" in values:
            values["cache_dir"] = Path(os.path.expanduser(str(values["cache_dir"]))).absolute()
        return replace(cls(), **values)


_SETTING_TYPES: dict[str, type | tuple[type, ...]] = {
    "cache_dir": str,
    "offline": bool,
    "max_parallel_fetches": int,
    "lock_timeout_s": (int, float),
    "touch_interval_ms": int,
}


def _load_settings_file(path: str) -> dict[str, Any]:
    data = _read_mapping(path)
    known = {f.name: f.type for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(path, key, f"unknown setting; known settings: {', '.join(sorted(known))}")
        expected: type | tuple[type, ...] = _SETTING_TYPES[key]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            name = getattr(expected, "__name__", "a number")
            raise ConfigError(path, key, f"expected {name}, got {value!r}")
        out[key] = value
    return out


def _read_mapping(path: str) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    data: Any
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(path, None, f"invalid JSON: {exc}") from None
    else:
        import yaml  # lazy: only config files need it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(path, None, f"invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, f"expected a mapping of fields, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class ModelConfig:
    """A model config file (DESIGN §5): what to provision and how strictly."""

    path: str
    model_ref: ModelRef
    expected_digest: Digest | None
    strict: bool | None
    engine: str | None


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    path = os.fspath(path)
    data = _read_mapping(path)
    allowed = {"model_ref", "expected_digest", "strict_verification", "engine"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(path, unknown[0], f"unknown field; allowed fields: {', '.join(sorted(allowed))}")
    raw_ref = data.get("model_ref")
    if not isinstance(raw_ref, str) or not raw_ref.strip():
        raise ConfigError(path, "model_ref", "required: a model reference such as ./model.gguf or hf:org/repo")
    try:
        # relative paths in a config are relative to the config file, not to wherever it is run from
        model_ref = parse(raw_ref, cwd=os.path.dirname(os.path.abspath(path)))
    except InvalidModelRef as exc:
        raise ConfigError(path, "model_ref", str(exc)) from None
    digest: Digest | None = None
    if data.get("expected_digest") is not None:
        try:
            digest = Digest.parse(data["expected_digest"])
        except InvalidDigest as exc:
            raise ConfigError(path, "expected_digest", str(exc)) from None
    strict = data.get("strict_verification")
    if strict is not None and not isinstance(strict, bool):
        raise ConfigError(path, "strict_verification", f"expected true or false, got {strict!r}")
    engine = data.get("engine")
    if engine is not None and engine not in ENGINES:
        raise ConfigError(path, "engine", f"expected one of {', '.join(ENGINES)}, got {engine!r}")
    return ModelConfig(path=path, model_ref=model_ref, expected_digest=digest, strict=strict, engine=engine)
