"""What a blob looked like when its bytes were last hashed: ``blobs/fingerprints/<hex>`` holds
``"<size> <mtime_ns> <ctime_ns> <inode>"``. A blob whose stat still says the same was not written since (ctime
cannot be set back, so an edit with its mtime restored still shows); any other blob is re-hashed before it is
linked or served (``BlobStore.trusted_blob``)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from model_provisioner.core.errors import UnsafeCachePath
from model_provisioner.storage.safefs import open_in_cache, write_atomic

log = logging.getLogger("model_provisioner")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def fingerprint_text(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"


class BlobFingerprints:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def record(self, sha256_hex: str, st: os.stat_result) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / sha256_hex, fingerprint_text(st).encode())
        except OSError as exc:  # only an optimisation: without a record the blob is re-hashed when next used
            log.debug("could not record the fingerprint of blob %s: %s", sha256_hex, exc)

    def matches(self, sha256_hex: str, st: os.stat_result) -> bool:
        try:
            fd = open_in_cache(self.directory / sha256_hex, os.O_RDONLY)
        except (OSError, UnsafeCachePath):
            return False
        try:
            recorded = os.read(fd, 256).decode("ascii", "replace")
        finally:
            os.close(fd)
        return recorded == fingerprint_text(st)

    def forget(self, sha256_hex: str) -> None:
        (self.directory / sha256_hex).unlink(missing_ok=True)

    def prune(self, has_blob: Callable[[str], bool], dry_run: bool = False) -> int:
        """Forget the records of blobs that are gone (``has_blob(hex)`` says); returns how many."""
        gone = 0
        if not self.directory.is_dir():
            return gone
        for item in os.scandir(self.directory):
            if _HEX64.fullmatch(item.name) and has_blob(item.name):
                continue
            gone += 1
            if not dry_run:
                os.unlink(item.path)
        return gone
