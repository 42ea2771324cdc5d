"""Two smaller sections of the settings file: ``oci_credentials`` (registry logins) and ``mirrors`` (Hub
endpoints, https URL rewrites and team model mirrors tried before the origin). Errors name the file and the
field (docs/settings.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_provisioner.core.errors import ConfigError


@dataclass(frozen=True)
class HttpsMirror:
    """Rewrite URLs starting with ``prefix`` to start with ``mirror`` instead (tried before the origin)."""

    prefix: str
    mirror: str


def parse_oci_credentials(path: str, creds: Any) -> dict[str, tuple[str, str]]:
    if not isinstance(creds, dict) or not all(
        isinstance(v, dict) and set(v) == {"username", "password"} and all(isinstance(x, str) for x in v.values())
        for v in creds.values()
    ):
        raise ConfigError(path, "oci_credentials", "expected {registry-host: {username: ..., password: ...}}")
    return {str(k): (v["username"], v["password"]) for k, v in creds.items()}


def parse_mirrors(path: str, mirrors: Any) -> dict[str, Any]:
    """The ``mirrors:`` section: ``model_mirrors``, ``hf_mirrors`` and ``https_mirrors``."""
    out: dict[str, Any] = {}
    if not isinstance(mirrors, dict) or set(mirrors) - {"hf", "https", "models"}:
        raise ConfigError(path, "mirrors", "expected a mapping with keys hf, https and/or models")
    roots = mirrors.get("models", [])
    if not isinstance(roots, list) or not all(isinstance(v, str) and v.startswith(("oci://", "s3://")) for v in roots):
        raise ConfigError(path, "mirrors.models", "expected a list of oci://registry/repo or s3://bucket/prefix/ roots")
    out["model_mirrors"] = tuple(roots)
    hf = mirrors.get("hf", [])
    if not isinstance(hf, list) or not all(isinstance(v, str) and "://" in v for v in hf):
        raise ConfigError(path, "mirrors.hf", "expected a list of Hub endpoint URLs")
    out["hf_mirrors"] = tuple(v.rstrip("/") for v in hf)
    rules = []
    for i, rule in enumerate(mirrors.get("https", [])):
        if not (
            isinstance(rule, dict)
            and isinstance(rule.get("prefix"), str)
            and isinstance(rule.get("mirror"), str)
            and set(rule) == {"prefix", "mirror"}
        ):
            raise ConfigError(path, f"mirrors.https[{i}]", "expected {prefix: URL prefix, mirror: URL prefix}")
        rules.append(HttpsMirror(rule["prefix"], rule["mirror"]))
    out["https_mirrors"] = tuple(rules)
    return out
