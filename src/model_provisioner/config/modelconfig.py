"""Model config files (docs/settings.md, "Model config"): which model(s) ``provision`` ensures and how strictly.

One model (``model_ref``, ``expected_digest``, ``strict_verification``, ``engine``) or several
(``models: [{…}, {…}]``). The CLI's spellings ``ref``, ``digest`` and ``strict`` are accepted too. Relative
refs are relative to the config file's folder. Errors name the file and the field (exit 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from model_provisioner.config.settings import read_mapping
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import ConfigError, InvalidDigest, InvalidModelRef
from model_provisioner.core.refs import ModelRef, parse
from model_provisioner.core.vocab import ENGINES

#: accepted spellings -> the field they mean
_FIELDS = {
    "model_ref": "model_ref",
    "ref": "model_ref",
    "expected_digest": "expected_digest",
    "digest": "expected_digest",
    "strict_verification": "strict_verification",
    "strict": "strict_verification",
    "engine": "engine",
}


@dataclass(frozen=True)
class ModelConfig:
    """One model to provision: what, and how strictly."""

    path: str
    model_ref: ModelRef
    expected_digest: Digest | None
    strict: bool | None
    engine: str | None


def load_model_configs(path: str | os.PathLike[str]) -> list[ModelConfig]:
    """Every model a config file names (one, or a ``models:`` list)."""
    path = os.fspath(path)
    data = read_mapping(path)
    if "models" not in data:
        return [parse_model(path, data, "")]
    if set(data) != {"models"}:
        other = sorted(set(data) - {"models"})[0]
        raise ConfigError(path, other, "a config with a models: list takes no other top-level field")
    models = data["models"]
    if not isinstance(models, list) or not models:
        raise ConfigError(path, "models", "expected a non-empty list of models")
    out = []
    for index, item in enumerate(models):
        if not isinstance(item, dict):
            raise ConfigError(path, f"models[{index}]", "expected a mapping (model_ref, expected_digest, …)")
        out.append(parse_model(path, item, f"models[{index}]."))
    return out


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The model of a single-model config file (the first of a list)."""
    return load_model_configs(path)[0]


def parse_model(path: str, raw: dict[str, Any], where: str = "") -> ModelConfig:
    """One model of a config file (``where`` prefixes field names in errors, e.g. ``models[2].``)."""
    data: dict[str, Any] = {}
    for key, value in raw.items():
        field = _FIELDS.get(key)
        if field is None:
            raise ConfigError(path, f"{where}{key}", f"unknown field; allowed fields: {', '.join(sorted(_FIELDS))}")
        if field in data:
            raise ConfigError(path, f"{where}{key}", f"{field} is given twice")
        data[field] = value
    raw_ref = data.get("model_ref")
    if not isinstance(raw_ref, str) or not raw_ref.strip():
        raise ConfigError(path, f"{where}model_ref", "required: a model reference such as ./model.gguf or hf:org/repo")
    try:
        # relative paths in a config are relative to the config file, not to wherever it is run from
        model_ref = parse(raw_ref, cwd=os.path.dirname(os.path.abspath(path)))
    except InvalidModelRef as exc:
        raise ConfigError(path, f"{where}model_ref", str(exc)) from None
    digest: Digest | None = None
    if data.get("expected_digest") is not None:
        try:
            digest = Digest.parse(data["expected_digest"])
        except InvalidDigest as exc:
            raise ConfigError(path, f"{where}expected_digest", str(exc)) from None
    strict = data.get("strict_verification")
    if strict is not None and not isinstance(strict, bool):
        raise ConfigError(path, f"{where}strict_verification", f"expected true or false, got {strict!r}")
    engine = data.get("engine")
    if engine is not None and engine not in ENGINES:
        raise ConfigError(path, f"{where}engine", f"expected one of {', '.join(ENGINES)}, got {engine!r}")
    return ModelConfig(path=path, model_ref=model_ref, expected_digest=digest, strict=strict, engine=engine)
