"""Re-hashing what the catalog recorded: one file, a file set (repo, split GGUF) or a local directory tree.

These functions only compute; the pipeline applies the outcome (Active again, or Failed with the blob
quarantined), and a read-only cache only reports it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import ProvisionerError
from model_provisioner.core.hashing import FileHash, hash_file, repo_digest
from model_provisioner.core.vocab import VerificationOutcome
from model_provisioner.storage.catalog import CatalogEntry, EntryFile, Fingerprint
from model_provisioner.verify.results import VerificationReport
from model_provisioner.verify.trees import scan_tree, tree_fingerprint


@dataclass
class Rehash:
    """What re-hashing found. ``fingerprint`` is the files' identity now (set when ``ok``)."""

    ok: bool
    outcome: VerificationOutcome  # verified, missing or mismatch
    expected: str | None
    actual: str | None
    path: str
    message: str
    bytes_hashed: int = 0
    actual_hash: FileHash | None = None
    #: blobs whose bytes no longer match their names: quarantined by the pipeline
    corrupt_blobs: list[str] = field(default_factory=list)
    fingerprint: Fingerprint | None = None

    def report(self, entry_id: str, message: str | None = None) -> VerificationReport:
        return VerificationReport(
            entry_id, self.ok, self.outcome, self.expected, self.actual, self.path, message or self.message
        )


def fingerprint_of(st: os.stat_result) -> Fingerprint:
    """(device, inode, size, mtime, ctime): decides whether a file must be re-hashed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def unchanged_since_verified(entry: CatalogEntry) -> bool:
    """One ``stat``: the entry's file is where it was and has the identity it had when it was verified."""
    try:
        st = os.stat(entry.local_path)
    except OSError:
        return False
    return entry.fingerprint is None or fingerprint_of(st) == entry.fingerprint


def rehash_entry(entry: CatalogEntry, files: list[EntryFile], digest: Digest | None) -> Rehash:
    """Re-hash an entry the way it was laid out: a local directory, a file set, or one file."""
    if "local_tree" in entry.metadata:
        return rehash_tree(entry, digest)
    if files:
        return rehash_set(entry, files)
    return rehash_file(entry, digest)


def rehash_file(entry: CatalogEntry, digest: Digest | None) -> Rehash:
    path = Path(entry.local_path)
    expected = digest or (Digest.parse(entry.expected_digest) if entry.expected_digest else None)
    recorded = Digest.parse(entry.digest) if entry.digest else None
    shown_expected = str(expected or recorded)
    if not entry.local_path or not path.is_file():
        message = f"{entry.id}: {entry.local_path or 'its file'} is missing; run ensure to restore it"
        return Rehash(False, "missing", shown_expected, None, entry.local_path, message)
    st = path.stat()
    actual = hash_file(path, [expected.algo] if expected is not None else [])
    failures: list[str] = []
    if recorded is not None and actual.sha256 != recorded:
        failures.append(f"recorded {recorded}, now {actual.sha256}")
    if expected is not None and actual.get(expected.algo) != expected:
        failures.append(f"expected {expected}, got {actual.get(expected.algo)}")
    if failures:
        message = f"{entry.id}: verification failed ({'; '.join(failures)}) at {path}"
        corrupt = [entry.blob] if entry.blob is not None else []
        return Rehash(
            False,
            "mismatch",
            shown_expected,
            str(actual.sha256),
            str(path),
            message,
            actual.size_bytes,
            actual,
            corrupt,
        )
    message = f"{entry.id}: ok ({actual.sha256})"
    return Rehash(
        True,
        "verified",
        shown_expected,
        str(actual.sha256),
        str(path),
        message,
        actual.size_bytes,
        actual,
        fingerprint=fingerprint_of(st),
    )


def rehash_set(entry: CatalogEntry, files: list[EntryFile]) -> Rehash:
    """A multi-file model (repo, split GGUF): every file against its blob digest, then the repo digest."""
    root = Path(str(entry.metadata.get("view_dir") or entry.local_path))
    problems: list[str] = []
    corrupt: list[str] = []
    hashed = 0
    for f in files:
        path = root / f.path
        if not path.is_file():
            problems.append(f"{f.path} is missing")
            continue
        actual = hash_file(path)
        hashed += actual.size_bytes
        if actual.sha256.hex != f.blob:
            problems.append(f"{f.path}: expected sha256:{f.blob}, got {actual.sha256}")
            corrupt.append(f.blob)
    if not problems and entry.digest and repo_digest([(f.path, f.blob, f.size_bytes) for f in files]) != entry.digest:
        problems.append("the file set no longer matches the recorded repo digest")
    if problems:
        message = f"{entry.id}: verification failed at {root}: {'; '.join(problems)}"
        return Rehash(False, "mismatch", entry.digest, None, str(root), message, hashed, corrupt_blobs=corrupt)
    fingerprint = entry.fingerprint
    with contextlib.suppress(OSError):
        fingerprint = fingerprint_of(os.stat(entry.local_path))
    message = f"{entry.id}: ok ({len(files)} files, {entry.digest})"
    return Rehash(True, "verified", entry.digest, entry.digest, str(root), message, hashed, fingerprint=fingerprint)


def rehash_tree(entry: CatalogEntry, digest: Digest | None) -> Rehash:
    """A local directory: re-scan it, re-hash every file and compare the repo digest."""
    root = Path(str(entry.metadata["local_tree"]))
    expected = digest or (Digest.parse(entry.expected_digest) if entry.expected_digest else None)
    recorded = entry.digest
    try:
        found = scan_tree(root, entry.id)
    except (ProvisionerError, OSError) as exc:
        found, problem = [], str(exc)
    else:
        problem = "" if found else f"{root} is missing or empty"
    if problem:
        message = f"{entry.id}: {problem}; run ensure to re-register it"
        return Rehash(False, "missing", recorded, None, entry.local_path, message)
    hashed = [(rel, hash_file(path, [])) for rel, path in found]
    actual = repo_digest([(rel, h.sha256.hex, h.size_bytes) for rel, h in hashed])
    total = sum(h.size_bytes for _, h in hashed)
    failures = []
    if recorded and actual != recorded:
        failures.append(f"recorded {recorded}, now {actual}")
    if expected is not None and str(expected) != actual:
        failures.append(f"expected {expected}, got {actual}")
    shown_expected = str(expected or recorded)
    if failures:
        message = f"{entry.id}: verification failed ({'; '.join(failures)}) at {root}"
        return Rehash(False, "mismatch", shown_expected, actual, str(root), message, total)
    message = f"{entry.id}: ok ({len(found)} files, {actual})"
    return Rehash(
        True,
        "verified",
        shown_expected,
        actual,
        entry.local_path,
        message,
        total,
        fingerprint=tree_fingerprint(root, found),
    )
