"""The gateway's settings (the settings file's ``gateway:`` section) and the models it knows by name (the
``models:`` list: alias, ref, digest, engine flags, keep_alive). Errors name the file and the field
(docs/engines.md, "One endpoint for every model")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from model_provisioner.core.errors import ConfigError, InvalidInput
from model_provisioner.core.units import parse_duration, parse_size

#: an alias is also part of its pool's id (``gw-<alias>``): the pool id's characters, shorter
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,59}$")
#: the longest ``keep_alive`` a caller may ask for (a week); a negative one means "until evicted"
MAX_KEEP_ALIVE_S = 7 * 86400.0


@dataclass(frozen=True)
class GatewayModel:
    """One ``models:`` entry: what ``"model": alias`` in a request means."""

    alias: str
    ref: str
    digest: str | None = None
    flags: tuple[str, ...] = ()
    #: None: the gateway's ``keep_alive``
    keep_alive_s: float | None = None


@dataclass(frozen=True)
class GatewaySettings:
    #: engines loaded at once; one more is loaded after the least recently used idle one is unloaded
    max_loaded: int = 3
    #: a loaded model with no request for this long is unloaded (a request's ``keep_alive`` overrides it)
    keep_alive_s: float = 300.0
    #: requests one model holds at once (waiting for its load, or at its engine); past it: 503 + Retry-After
    max_queue: int = 16
    #: memory kept free of models (bytes); a model whose estimate does not fit beside it is refused (507)
    memory_reserve_bytes: int = 1 << 30
    #: the most the gateway's models may need together (bytes; 0: no limit but the machine's free memory)
    memory_limit_bytes: int = 0
    #: after a failed load, the model answers its error for this long before a request may retry (doubling
    #: up to ``load_backoff_max_s`` while it keeps failing)
    load_backoff_s: float = 5.0
    load_backoff_max_s: float = 300.0
    models: tuple[GatewayModel, ...] = field(default_factory=tuple)

    def model(self, alias: str) -> GatewayModel | None:
        return next((m for m in self.models if m.alias == alias), None)


_TYPES: dict[str, Any] = {
    "max_loaded": int,
    "keep_alive": (int, float, str),
    "max_queue": int,
    "memory_reserve": (int, str),
    "memory_limit": (int, str),
    "load_backoff": (int, float, str),
    "load_backoff_max": (int, float, str),
}
_MODEL_KEYS = {"alias", "ref", "digest", "flags", "keep_alive"}


def seconds(path: str, where: str, value: Any) -> float:
    """A duration as a number of seconds or a string (``5m``, ``30s``); negative only as ``-1`` (forever)."""
    try:
        out = float(value) if isinstance(value, (int, float)) else parse_duration(str(value))
    except InvalidInput as exc:
        raise ConfigError(path, where, str(exc)) from None
    if out < 0:
        return -1.0
    return min(out, MAX_KEEP_ALIVE_S)


def _size(path: str, where: str, value: Any) -> int:
    try:
        return value if isinstance(value, int) else parse_size(str(value))
    except InvalidInput as exc:
        raise ConfigError(path, where, str(exc)) from None


def parse_gateway(path: str, data: Any, models: Any) -> GatewaySettings:
    """The ``gateway:`` section (may be absent: ``data`` is then ``{}``) and the ``models:`` list."""
    if not isinstance(data, dict):
        raise ConfigError(path, "gateway", "expected a mapping")
    for key, value in data.items():
        if key not in _TYPES:
            raise ConfigError(path, f"gateway.{key}", f"unknown key; expected one of {', '.join(sorted(_TYPES))}")
        if isinstance(value, bool) or not isinstance(value, _TYPES[key]):
            raise ConfigError(path, f"gateway.{key}", f"expected a number or a string, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key in ("max_loaded", "max_queue"):
        if key in data:
            if data[key] < 1:
                raise ConfigError(path, f"gateway.{key}", "must be at least 1")
            out[key] = data[key]
    for key in ("keep_alive", "load_backoff", "load_backoff_max"):
        if key in data:
            out[f"{key}_s"] = seconds(path, f"gateway.{key}", data[key])
    for key in ("memory_reserve", "memory_limit"):
        if key in data:
            out[f"{key}_bytes"] = _size(path, f"gateway.{key}", data[key])
    out["models"] = _parse_models(path, models)
    return GatewaySettings(**out)


def _parse_models(path: str, models: Any) -> tuple[GatewayModel, ...]:
    if models is None:
        return ()
    if not isinstance(models, list):
        raise ConfigError(path, "models", "expected a list of {alias, ref, digest, flags, keep_alive}")
    out: list[GatewayModel] = []
    for i, item in enumerate(models):
        where = f"models[{i}]"
        if not isinstance(item, dict) or set(item) - _MODEL_KEYS or not {"alias", "ref"} <= set(item):
            raise ConfigError(path, where, "expected {alias, ref} and optionally digest, flags, keep_alive")
        alias, ref, digest, flags = item["alias"], item["ref"], item.get("digest"), item.get("flags", [])
        if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
            raise ConfigError(path, f"{where}.alias", "1-60 letters, digits, '_', '.', ':' or '-', starting with one")
        if any(m.alias == alias for m in out):
            raise ConfigError(path, f"{where}.alias", f"{alias!r} is listed twice")
        if not isinstance(ref, str) or not ref:
            raise ConfigError(path, f"{where}.ref", "expected a model ref")
        if digest is not None and not isinstance(digest, str):
            raise ConfigError(path, f"{where}.digest", "expected sha256:<64 hex>")
        if not isinstance(flags, list) or not all(isinstance(f, (str, int, float)) for f in flags):
            raise ConfigError(path, f"{where}.flags", "expected a list of engine flags, e.g. ['--ctx-size', 2048]")
        keep = seconds(path, f"{where}.keep_alive", item["keep_alive"]) if "keep_alive" in item else None
        out.append(GatewayModel(alias, ref, digest, tuple(str(f) for f in flags), keep))
    return tuple(out)
