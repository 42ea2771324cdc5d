"""Content digests: ``sha256:<64 lowercase hex>`` strings or ``{algo, value}`` mappings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from model_provisioner.core.errors import InvalidDigest

#: supported algorithms and the length of their hex digest
HEX_LENGTHS: dict[str, int] = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class Digest:
    algo: str
    hex: str

    def __post_init__(self) -> None:
        if self.algo not in HEX_LENGTHS:
            raise InvalidDigest(
                f"{self.algo}:{self.hex}",
                f"unsupported algorithm {self.algo!r}; use one of {', '.join(sorted(HEX_LENGTHS))}",
            )
        want = HEX_LENGTHS[self.algo]
        if len(self.hex) != want or not _HEX.fullmatch(self.hex):
            raise InvalidDigest(
                f"{self.algo}:{self.hex}",
                f"{self.algo} needs exactly {want} lowercase hex characters, got {len(self.hex)}",
            )

    def __str__(self) -> str:
        return f"{self.algo}:{self.hex}"

    @classmethod
    def parse(cls, value: object) -> Digest:
        """Accept ``"sha256:HEX"``, a ``Digest``, or ``{"algo": .., "value": ..}``.

        Upper-case hex is accepted and normalised; a bare hex string is refused because the algorithm
        would be a guess.
        """
        if isinstance(value, Digest):
            return value
        if isinstance(value, Mapping):
            algo = value.get("algo", value.get("algorithm"))
            hex_value = value.get("value", value.get("hex"))
            if not isinstance(algo, str) or not isinstance(hex_value, str):
                raise InvalidDigest(dict(value), 'expected {"algo": "sha256", "value": "<hex>"} with string fields')
            hex_value = hex_value.strip()
            if hex_value.lower().startswith(algo.lower() + ":"):
                hex_value = hex_value.split(":", 1)[1]
            return cls(algo.strip().lower(), hex_value.lower())
        if isinstance(value, str):
            text = value.strip()
            if ":" not in text:
                raise InvalidDigest(value, "expected the form sha256:<64 hex characters>")
            algo, hex_value = text.split(":", 1)
            return cls(algo.lower(), hex_value.lower())
        raise InvalidDigest(value, "expected a string like sha256:<hex> or a mapping {algo, value}")

    @classmethod
    def sha256(cls, hex_value: str) -> Digest:
        return cls("sha256", hex_value)
