"""Local directories as models (a Triton model repository, or a transformers repo), registered in place.

Like a local file, a directory is never copied: its files are hashed once, the set gets a repo digest
(DESIGN §4) and the entry records a *tree fingerprint* (device and inode of the directory, total size,
file count and the newest mtime of any file or directory in it). An unchanged fingerprint answers the next
``ensure`` without hashing; any change (a file edited, added, removed or renamed) re-hashes the set.
Symlinks are followed only while they stay inside the directory; sockets, FIFOs and devices are refused.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import failpoints
from .catalog import CatalogEntry, Lifecycle, VerificationRecord, now_ms
from .digest import Digest
from .errors import CorruptModel, InvalidInput, ProvisionerError, VerificationFailed
from .formats import FormatInfo
from .hashing import FileHash, hash_file
from .signatures import signature_label
from .store import repo_digest

if TYPE_CHECKING:
    from .provisioner import ModelProvisioner, ResolvedModel
    from .refs import FileRef

log = logging.getLogger("model_provisioner")
MAX_FILES = 100_000


def scan_tree(root: Path, subject: str) -> list[tuple[str, Path]]:
    """[(posix relative path, absolute path)] of every regular file under ``root``, sorted."""
    real_root = os.path.realpath(root)
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if os.path.samefile(dirpath, root):
            dirnames[:] = [d for d in dirnames if d not in (".git", ".cache")]  # VCS and tool caches: not model
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel.startswith(".") and rel.split("/")[0] in (".git", ".cache"):
                continue
            real = os.path.realpath(full)
            if os.path.commonpath([real, real_root]) != real_root:
                raise CorruptModel(subject, f"{rel} is a symlink pointing outside the directory ({real}); refused")
            try:
                st = os.stat(full)
            except OSError as exc:
                raise InvalidInput(f"cannot read {full}: {exc.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                continue  # a symlink to a directory inside the tree: its files are walked under their own name
            if not stat.S_ISREG(st.st_mode):
                raise CorruptModel(subject, f"{rel} is not a regular file (device, FIFO or socket); refused")
            out.append((rel, Path(full)))
            if len(out) > MAX_FILES:
                raise InvalidInput(f"{root} holds more than {MAX_FILES} files; give the model directory itself")
    return sorted(out)


def tree_fingerprint(root: Path, files: list[tuple[str, Path]]) -> tuple[int, int, int, int]:
    st = os.stat(root)
    total = newest = 0
    for _, path in files:
        fst = os.stat(path)
        total += fst.st_size
        newest = max(newest, fst.st_mtime_ns, fst.st_ctime_ns)
    for dirpath, _, _ in os.walk(root):
        dst = os.stat(dirpath)
        newest = max(newest, dst.st_mtime_ns)
    # adding, removing or renaming a file changes its directory's mtime, so the newest mtime covers those too
    return (st.st_dev, st.st_ino, total, newest)


def provision_directory(
    prov: ModelProvisioner, ref: FileRef, entry: CatalogEntry | None, digest: Digest | None, strict: bool
) -> ResolvedModel:
    from .formats.triton import find_repository_root, inspect_repository
    from .provisioner import _Check, _compare, _resolved
    from .remote import detect_layout

    root = ref.local_path
    files = scan_tree(root, ref.id)
    if not files:
        raise InvalidInput(f"{root} is a directory with no files; give a model file or a model repository directory")
    fingerprint = tree_fingerprint(root, files)
    if (
        entry is not None
        and entry.lifecycle is Lifecycle.ACTIVE
        and entry.fingerprint == fingerprint
        and (digest is None or str(digest) in (entry.digest, entry.expected_digest))
        and (not prov.settings.require_signature or entry.metadata.get("signature") == signature_label(prov.settings))
    ):
        return _resolved(entry, from_cache=True)
    if digest is not None and digest.algo != "sha256":
        raise InvalidInput(f"{ref.id}: a directory is pinned by its sha256 repo digest, not {digest.algo}")
    paths = [rel for rel, _ in files]
    layout = detect_layout(paths, ref.id)
    if layout not in ("triton", "transformers"):
        raise InvalidInput(
            f"{root} is a directory; give the model file inside it (e.g. {root}/{paths[0]}), or a Triton or "
            "transformers repository directory"
        )
    base = prov._pending(ref, entry, str(root), digest, strict)
    start = time.monotonic()
    try:
        hashed = [(rel, hash_file(path, [])) for rel, path in files]
        if tree_fingerprint(root, files) != fingerprint:
            raise VerificationFailed(
                f"{ref.id}: the directory changed while it was being hashed; run ensure again", reason="changed"
            )
        entry_digest = repo_digest([(rel, h.sha256.hex, h.size_bytes) for rel, h in hashed])
        total = sum(h.size_bytes for _, h in hashed)
        check = _compare(ref.id, FileHash(Digest.parse(entry_digest), total, {}), digest, strict, owned=False)
        if check.result == "fail":
            assert check.error is not None
            raise check.error
        meta: dict[str, Any]
        if layout == "triton":
            repo_root = find_repository_root(paths) or ""
            meta = inspect_repository(root, repo_root, paths, ref.id)
            local = root / repo_root if repo_root else root
            fmt = FormatInfo("triton", meta)
        else:
            from .formats.transformers import summarize

            meta = summarize(root, paths)
            local = root
            fmt = FormatInfo("transformers", meta)
        if prov.settings.require_signature:
            from .signatures import verify_signature

            meta = {**meta, "signature": verify_signature(prov.settings, root, ref.id)}
    except ProvisionerError as exc:
        reason = exc.reason if isinstance(exc, VerificationFailed) else exc.code
        prov._fail(base, _Check("fail", reason, exc), None, 0)
        raise
    for message in check.warnings:
        log.warning(message)
    failpoints.failpoint("ensure.before_commit")
    now = now_ms()
    active = replace(
        base,
        local_path=str(local),
        lifecycle=Lifecycle.ACTIVE,
        digest=entry_digest,
        size_bytes=total,
        format=fmt.format,
        verification=check.reason,
        last_verified_ms=now,
        fingerprint=fingerprint,
        metadata={
            **meta,
            "format": fmt.format,
            "layout": layout,
            "repo_digest": entry_digest,
            "local_tree": str(root),
            "file_count": len(files),
        },
        blob=None,
        error=None,
    )
    prov.catalog.put(active)
    prov._record(VerificationRecord(active.id, now, check.result, check.reason, entry_digest, total))
    log.info("%s: %s (%d files) in %d ms", ref.id, check.reason, len(files), (time.monotonic() - start) * 1000)
    return _resolved(active, from_cache=False)


def reverify_directory(prov: ModelProvisioner, entry: CatalogEntry, digest: Digest | None) -> Any:
    """``verify`` of a directory entry: re-hash every file and compare the repo digest."""
    from .provisioner import VerificationReport

    root = Path(str(entry.metadata["local_tree"]))
    expected = digest or (Digest.parse(entry.expected_digest) if entry.expected_digest else None)
    recorded = entry.digest
    try:
        files = scan_tree(root, entry.id)
    except (ProvisionerError, OSError) as exc:
        files = []
        problem = str(exc)
    else:
        problem = "" if files else f"{root} is missing or empty"
    if problem:
        message = f"{entry.id}: {problem}; run ensure to re-register it"
        prov._mark_failed(entry, "missing", message, 0, None)
        return VerificationReport(entry.id, False, "missing", recorded, None, entry.local_path, message)
    hashed = [(rel, hash_file(path, [])) for rel, path in files]
    actual = repo_digest([(rel, h.sha256.hex, h.size_bytes) for rel, h in hashed])
    total = sum(h.size_bytes for _, h in hashed)
    failures = []
    if recorded and actual != recorded:
        failures.append(f"recorded {recorded}, now {actual}")
    if expected is not None and str(expected) != actual:
        failures.append(f"expected {expected}, got {actual}")
    if failures:
        message = f"{entry.id}: verification failed ({'; '.join(failures)}) at {root}"
        prov._mark_failed(entry, "mismatch", message, total, None)
        return VerificationReport(entry.id, False, "mismatch", str(expected or recorded), actual, str(root), message)
    now = now_ms()
    prov.catalog.put(
        replace(
            entry,
            lifecycle=Lifecycle.ACTIVE,
            last_verified_ms=now,
            error=None,
            fingerprint=tree_fingerprint(root, files),
        )
    )
    prov._record(VerificationRecord(entry.id, now, "pass", "verified", actual, total))
    message = f"{entry.id}: ok ({len(files)} files, {actual})"
    return VerificationReport(entry.id, True, "verified", str(expected or recorded), actual, entry.local_path, message)
