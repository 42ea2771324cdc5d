"""The signature policy (the settings file's ``signatures:`` section; docs/verification.md, "Signature policy"):
``off``, ``warn`` or ``enforce`` by default and per scope (a glob over model ids, first match wins), and the
trusted public keys. ``require_signature`` / ``--require-signature`` is the one-off ``enforce`` for everything."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from model_provisioner.core.errors import ConfigError

SignatureMode = Literal["off", "warn", "enforce"]
MODES: tuple[SignatureMode, ...] = get_args(SignatureMode)


@dataclass(frozen=True)
class SignaturePolicy:
    policy: SignatureMode = "off"
    #: PEM public keys (elliptic-curve, as ``model_signing sign key`` makes) or CA certificates (a signature by a
    #: certificate chaining up to one): a signature by any of them verifies
    keys: tuple[str, ...] = ()
    #: (glob over model ids, mode), in the file's order
    scopes: tuple[tuple[str, SignatureMode], ...] = field(default_factory=tuple)

    def mode_for(self, model_id: str) -> tuple[SignatureMode, str]:
        """The mode for ``model_id`` and where it comes from (a scope's glob, or ``signatures.policy``)."""
        for pattern, mode in self.scopes:
            if fnmatch.fnmatchcase(model_id, pattern):
                return mode, f"scope {pattern!r}"
        return self.policy, "signatures.policy"


def parse_signatures(path: str, data: Any) -> SignaturePolicy:
    if not isinstance(data, dict) or set(data) - {"policy", "keys", "scopes"}:
        raise ConfigError(path, "signatures", "expected {policy: off|warn|enforce, keys: [PEM…], scopes: {glob: mode}}")
    policy = data.get("policy", "off")
    if policy not in MODES:
        raise ConfigError(path, "signatures.policy", f"expected one of {', '.join(MODES)}")
    keys = data.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(path, "signatures.keys", "expected a list of public key (PEM) paths")
    scopes = data.get("scopes", {})
    if not isinstance(scopes, dict) or not all(isinstance(k, str) and v in MODES for k, v in scopes.items()):
        raise ConfigError(path, "signatures.scopes", 'expected {"oci://registry/team/*": enforce, "hf:*": warn}')
    return SignaturePolicy(policy, tuple(keys), tuple(scopes.items()))
