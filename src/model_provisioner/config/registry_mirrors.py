"""Registry mirrors with containerd's ``hosts.toml`` semantics: for a registry, mirrors tried in order (each
for what its capabilities allow: ``pull`` for blobs, ``resolve`` for manifests by tag), the registry itself
last. Every byte from a mirror is verified against the digest the manifest names, so a mirror can never
poison the cache; a mirror that fails is logged and skipped (docs/fleet.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_provisioner.core.errors import ConfigError

CAPABILITIES = ("pull", "resolve")


@dataclass(frozen=True)
class RegistryMirror:
    url: str
    capabilities: frozenset[str] = frozenset(CAPABILITIES)

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def parse_registry_mirrors(path: str, data: Any) -> dict[str, tuple[RegistryMirror, ...]]:
    """``registry_mirrors: {"<registry host[:port]>": [{url, capabilities: [pull, resolve]}, ...]}``."""
    if not isinstance(data, dict):
        raise ConfigError(path, "registry_mirrors", "expected {registry: [{url: ..., capabilities: [pull]}]}")
    out: dict[str, tuple[RegistryMirror, ...]] = {}
    for registry, mirrors in data.items():
        where = f"registry_mirrors.{registry}"
        if not isinstance(mirrors, list):
            raise ConfigError(path, where, "expected a list of mirrors")
        parsed = []
        for i, item in enumerate(mirrors):
            if not isinstance(item, dict) or not isinstance(item.get("url"), str) or "://" not in item["url"]:
                raise ConfigError(path, f"{where}[{i}]", "expected {url: http(s)://host[:port], capabilities: [...]}")
            caps = item.get("capabilities", list(CAPABILITIES))
            if set(item) - {"url", "capabilities"} or not isinstance(caps, list) or set(caps) - set(CAPABILITIES):
                raise ConfigError(path, f"{where}[{i}]", "keys are url and capabilities (pull, resolve)")
            parsed.append(RegistryMirror(item["url"].rstrip("/"), frozenset(caps)))
        out[str(registry)] = tuple(parsed)
    return out
