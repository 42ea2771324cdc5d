"""Records of unpacked archive layers (OCI tar layers): what each one held, so the archive itself need not be
kept. Another model sharing the layer (a second tag, a shared tokenizer layer) is laid out from the blobs, each
re-checked (``BlobStore.trusted_blob``) before it is used."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import UnsafeCachePath
from model_provisioner.storage.safefs import read_small, write_atomic

_HEX64 = re.compile(r"[0-9a-f]{64}")


class LayerRecords:
    def __init__(self, directory: Path, trusted_blob: Callable[[str], Path | None]) -> None:
        self.directory = directory
        self.trusted_blob = trusted_blob

    def record(self, archive_hex: str, members: list[tuple[str, str, int]]) -> None:
        """Remember what archive ``archive_hex`` unpacked to, so the archive itself need not be kept: another
        model sharing the layer (a second tag, a shared tokenizer layer) is laid out from the blobs."""
        Digest.sha256(archive_hex)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / f"{archive_hex}.json", json.dumps([list(m) for m in members]).encode())

    def members(self, archive_hex: str) -> list[tuple[str, str, int]] | None:
        """The recorded members of an unpacked archive when every one of their blobs is still in the store."""
        Digest.sha256(archive_hex)
        try:
            raw = json.loads(read_small(self.directory / f"{archive_hex}.json", 64 << 20))
        except (OSError, ValueError, UnsafeCachePath):
            return None
        if not isinstance(raw, list) or not raw:
            return None
        members: list[tuple[str, str, int]] = []
        for item in raw:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and isinstance(item[1], str)
                and _HEX64.fullmatch(item[1])
                and isinstance(item[2], int)
            ):
                return None
            blob = self.trusted_blob(item[1])
            try:
                if blob is None or os.lstat(blob).st_size != item[2]:
                    return None
            except OSError:
                return None
            members.append((item[0], item[1], item[2]))
        return members

    def prune(self, dry_run: bool = False) -> list[str]:
        """Forget layers whose member blobs are gone (gc took them); returns the layer digests forgotten."""
        gone: list[str] = []
        if not self.directory.is_dir():
            return gone
        for item in os.scandir(self.directory):
            name = item.name
            if name.endswith(".json") and _HEX64.fullmatch(name[:-5]) and self.members(name[:-5]) is None:
                gone.append(name[:-5])
                if not dry_run:
                    os.unlink(item.path)
            elif name.endswith(".tmp") and not dry_run:
                os.unlink(item.path)  # a write a crash interrupted
        return gone
