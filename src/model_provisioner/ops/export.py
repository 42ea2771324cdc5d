"""A verified model's files laid out in a directory of the caller's (KServe's ``/mnt/models``): hard links to the
blobs when the directory is on the cache's filesystem (no byte copied), else copies checked against each
blob's digest as they are written. A transformers or Triton repository's files land at the directory's top,
a one-file model as ``DEST/<file>`` (docs/kserve.md)."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from model_provisioner.core.errors import DigestMismatch, InvalidInput
from model_provisioner.core.paths import check_relative_path
from model_provisioner.ops.cache import Cache
from model_provisioner.storage.views import view_source_name
from model_provisioner.verify.results import ResolvedModel
from model_provisioner.verify.trees import scan_tree

COPY_CHUNK = 8 << 20


@dataclass
class ExportReport:
    files: int = 0
    linked: int = 0
    copied_bytes: int = 0


def export(cache: Cache, resolved: ResolvedModel, dest: Path) -> ExportReport:
    """Lay ``resolved`` out under ``dest`` (created); files already there with the same bytes are kept."""
    dest.mkdir(parents=True, exist_ok=True)
    report = ExportReport()
    files = _files(cache, resolved)
    # a hard link changes the blob's ctime: what the cache trusted stays trusted (no re-hash at the next use)
    with cache.ledger.keeping_trust(sha_hex for _, _, sha_hex in files if sha_hex is not None):
        for rel, source, sha_hex in files:
            check_relative_path(rel, resolved.id)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            report.files += 1
            if _same_file(source, target):
                continue
            if _link(source, target):
                report.linked += 1
            else:
                report.copied_bytes += copy_verified(source, target, sha_hex, resolved.id)
    return report


def _files(cache: Cache, resolved: ResolvedModel) -> list[tuple[str, Path, str | None]]:
    """(path under DEST, the file to take it from, its sha256 when the catalog knows it)."""
    entry_files = cache.catalog.files(resolved.id)
    view_dir = resolved.metadata.get("view_dir")
    if entry_files and isinstance(view_dir, str):
        base = Path(view_dir)
        return [(f.path, base / f.path, f.blob) for f in entry_files]
    local_tree = resolved.metadata.get("local_tree")
    if isinstance(local_tree, str):  # a local directory registered in place: hashed when it was verified
        return [(rel, path, None) for rel, path in scan_tree(Path(local_tree), resolved.id)]
    if resolved.local_path.is_dir():
        raise InvalidInput(f"{resolved.id}: its view {resolved.local_path} is a directory with no file list")
    digest = resolved.digest.split(":", 1)[1] if resolved.digest.startswith("sha256:") else None
    name = view_source_name(resolved.local_path)
    return [(name, resolved.local_path, digest)]


def _same_file(source: Path, target: Path) -> bool:
    try:
        return os.path.samefile(source, target)
    except OSError:
        return False


def _link(source: Path, target: Path) -> bool:
    tmp = target.with_name(f".{target.name}.mprov-tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        return False  # another filesystem (EXDEV), or links not allowed there: copy instead
    os.replace(tmp, target)
    return True


def copy_verified(source: Path, target: Path, sha_hex: str | None, subject: str) -> int:
    tmp = target.with_name(f".{target.name}.mprov-tmp")
    hasher = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(tmp, "wb") as out:
        while chunk := src.read(COPY_CHUNK):
            hasher.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if sha_hex is not None and hasher.hexdigest() != sha_hex:
        tmp.unlink(missing_ok=True)
        raise DigestMismatch(subject, f"sha256:{sha_hex}", f"sha256:{hasher.hexdigest()}", f"{target} was not written")
    os.replace(tmp, target)
    shutil.copystat(source, target)
    os.chmod(target, 0o444)
    return size
