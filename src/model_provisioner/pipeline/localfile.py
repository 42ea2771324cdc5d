"""Local files, registered in place (never copied), and bytes imported into the store under another ref
(``register_model``): stat, hash once, inspect the format, compare, commit through the ledger."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import replace
from pathlib import Path

from model_provisioner.core import failpoints
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import (
    CorruptModel,
    DigestMismatch,
    InvalidInput,
    NotFound,
    PolicyDenied,
    UnsupportedFormat,
    VerificationFailed,
)
from model_provisioner.core.hashing import FileHash, hash_file
from model_provisioner.core.refs import FileRef, ModelRef, hub_hint
from model_provisioner.core.units import now_ms
from model_provisioner.core.vocab import CheckResult
from model_provisioner.formats import inspect_file
from model_provisioner.pipeline.context import Workspace
from model_provisioner.pipeline.localtree import provision_directory
from model_provisioner.storage.catalog import CatalogEntry
from model_provisioner.storage.locks import fetch_slot, model_lock, store_in_use
from model_provisioner.storage.safefs import confined_stat
from model_provisioner.verify.compare import Check, carried_pin, compare, prior_pin
from model_provisioner.verify.rehash import fingerprint_of
from model_provisioner.verify.results import ResolvedModel, resolved_from
from model_provisioner.verify.signatures import verify_signature

log = logging.getLogger("model_provisioner")


def provision_local(
    ws: Workspace, ref: FileRef, entry: CatalogEntry | None, digest: Digest | None, strict: bool
) -> ResolvedModel:
    """A ``file:`` ref: a model file, or a model directory (Triton or transformers repository)."""
    with fetch_slot(ws.store.locks_dir, ws.settings.max_parallel_fetches, ws.settings.lock_timeout_s):
        failpoints.failpoint("fetch.slot")
        path = ref.local_path
        if path.is_dir():
            if ws.settings.confine_files:
                check_confined(ws, ref, path, os.stat(path))
            return provision_directory(ws, ref, entry, digest, strict)
        st = stat_model_file(path, ref.id)
        if ws.settings.confine_files:
            check_confined(ws, ref, path, st)
        pinned_before = prior_pin(entry)
        digest, strict = carried_pin(entry, digest, strict)
        known: FileHash | None = None
        if (
            entry is not None
            and entry.fingerprint == fingerprint_of(st)
            and entry.digest
            and entry.verification not in ("corrupt", "empty", "unsupported")
            and (digest is None or digest.algo == "sha256")
        ):
            # unchanged bytes, only the question changed (e.g. a digest now given): no need to re-hash
            known = FileHash(Digest.parse(entry.digest), entry.size_bytes, {})
        base = ws.ledger.pending(ref, before=entry, path=str(path), digest=digest, strict=strict)
        return verify_and_commit(ws, ref, base, path, st, digest, strict, known, blob=None, pin_before=pinned_before)


def check_confined(ws: Workspace, ref: ModelRef, path: Path, st: os.stat_result) -> None:
    """API requests: the file must be under api_file_roots, reached without a symlink, and be the inode
    about to be hashed (the hash is then checked against a second stat: a swap in between is refused)."""
    confined = confined_stat(path, ws.settings.api_file_roots)
    if confined is None or (confined.st_dev, confined.st_ino) != (st.st_dev, st.st_ino):
        raise PolicyDenied(
            f"{ref.id}: file refs through the API must be plain files under the configured roots "
            f"({', '.join(ws.settings.api_file_roots) or 'none configured: set api_file_roots'}), "
            "reached without symbolic links"
        )


def import_into_store(
    ws: Workspace, ref: ModelRef, source: Path, digest: Digest | None, strict: bool, *, link: bool = False
) -> ResolvedModel:
    """Bytes the caller already has, registered under a remote ref: copied (or linked) into the blob store
    while hashing, then verified and viewed like a download, under the model's lock and the store's."""
    with (
        model_lock(ws.store.locks_dir, ref.id, ws.settings.lock_timeout_s),
        store_in_use(ws.store.locks_dir, ws.settings.lock_timeout_s),
    ):
        return _import_locked(ws, ref, source, digest, strict, link=link)


def _import_locked(
    ws: Workspace, ref: ModelRef, source: Path, digest: Digest | None, strict: bool, *, link: bool
) -> ResolvedModel:
    st = stat_model_file(source, str(source))
    entry = ws.catalog.get(ref.id)
    base = ws.ledger.pending(ref, before=entry, path=str(source), digest=digest, strict=strict)
    try:
        # strict: a mismatch is refused before anything reaches the store
        blob, sha_hex, size = ws.store.import_file(source, digest if strict else None, ref.id, link=link)
    except DigestMismatch as exc:
        ws.ledger.fail(base, Check(CheckResult.FAIL, "mismatch", exc), bytes_hashed=st.st_size)
        raise
    known = FileHash(Digest.sha256(sha_hex), size, {})
    if digest is not None and digest.algo != "sha256":
        known = hash_file(blob, [digest.algo])
    return verify_and_commit(
        ws, ref, base, blob, blob.stat(), digest, strict, known, blob=sha_hex, source_name=source.name
    )


def verify_and_commit(
    ws: Workspace,
    ref: ModelRef,
    base: CatalogEntry,
    path: Path,
    st: os.stat_result,
    digest: Digest | None,
    strict: bool,
    known: FileHash | None,
    blob: str | None,
    source_name: str = "",
    pin_before: str | None = None,
) -> ResolvedModel:
    """Hash (unless ``known``), inspect, compare, check the signature, view and commit one file."""
    subject = ref.id
    ledger = ws.ledger
    bytes_hashed = 0
    if st.st_size == 0:
        err = VerificationFailed(
            f"{subject}: the file is empty (0 bytes), so it cannot be a model; re-download or re-export it",
            reason="empty",
        )
        ledger.fail(base, Check(CheckResult.FAIL, "empty", err), new_blob=blob)
        raise err
    if known is None:
        known = hash_file(path, [digest.algo] if digest is not None else [])
        bytes_hashed = known.size_bytes
        failpoints.failpoint("ensure.hashed")
        if fingerprint_of(os.stat(path)) != fingerprint_of(st):
            changed = VerificationFailed(
                f"{subject}: the file changed while it was being hashed; wait for the writer to finish "
                "and run ensure again",
                reason="changed",
            )
            ledger.fail(base, Check(CheckResult.FAIL, "changed", changed), bytes_hashed=bytes_hashed, new_blob=blob)
            raise changed
    try:
        fmt = inspect_file(path, subject)
    except UnsupportedFormat as exc:
        ledger.fail(
            base, Check(CheckResult.FAIL, "unsupported", exc), known=known, bytes_hashed=bytes_hashed, new_blob=blob
        )
        raise
    except CorruptModel as exc:
        ledger.fail(
            base, Check(CheckResult.FAIL, "corrupt", exc), known=known, bytes_hashed=bytes_hashed, new_blob=blob
        )
        raise
    check = compare(subject, known, digest, strict=strict, owned=blob is not None)
    if check.result is CheckResult.FAIL:
        ledger.fail(
            replace(base, expected_digest=pin_before),
            check,
            known=known,
            bytes_hashed=bytes_hashed,
            fmt=fmt,
            new_blob=blob,
        )
        assert check.error is not None
        raise check.error
    for message in check.warnings:
        log.warning(message)
    if fmt.format == "file":
        log.warning(
            "%s: no model format recognised (not GGUF, safetensors or a model repository); recorded as a "
            "plain file (format 'file'): check the path if you meant a model",
            subject,
        )
    try:
        signed = _signature(ws, path, subject, blob)
    except VerificationFailed as exc:
        ledger.fail(
            base,
            Check(CheckResult.FAIL, exc.reason, exc),
            known=known,
            bytes_hashed=bytes_hashed,
            fmt=fmt,
            new_blob=blob,
        )
        raise
    local_path = path
    if blob is not None:
        local_path = ledger.link_blob_view(ref, source_name or path.name, blob, fmt)
        st = os.stat(local_path)
    failpoints.failpoint("ensure.before_commit")
    active = replace(
        base,
        local_path=str(local_path),
        digest=str(known.sha256),
        size_bytes=known.size_bytes,
        format=fmt.format,
        last_verified_ms=now_ms(),
        fingerprint=fingerprint_of(st),
        metadata={**fmt.metadata, "format": fmt.format, **({"signature": signed} if signed else {})},
        blob=blob,
    )
    if base.blob and base.blob != blob:
        ledger.drop_blob_if_unused(base.blob, active.id)
    return resolved_from(ledger.commit(active, check, bytes_hashed), from_cache=False)


def _signature(ws: Workspace, path: Path, subject: str, blob: str | None) -> str | None:
    """The signature label as the policy asks for it (None when it asks for none)."""

    def check() -> str:
        if blob is not None:
            raise VerificationFailed(
                f"{subject}: signatures are checked on local files and directory models; provision this "
                "one from its signed source",
                reason="unsigned",
            )
        return verify_signature(ws.settings, path, subject)

    return ws.checked_signature(subject, check)


def stat_model_file(path: Path, subject: str) -> os.stat_result:
    """The stat of a model file, or a one-line error saying why it cannot be one (missing, a directory, a
    device, unreadable)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(
            f"model file not found: {path} (from {subject}); check the path or the working directory"
            f"{hub_hint(str(path))}"
        ) from None
    except PermissionError:
        raise InvalidInput(
            f"cannot access {path}: permission denied; fix its permissions or run as its owner"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot access {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{path} is a directory; give the model file inside it (e.g. {path}/model.gguf)")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{path} is not a regular file (device, FIFO or socket); give a model file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise InvalidInput(
            f"cannot read {path}: permission denied; fix its permissions (chmod a+r) or run as its owner"
        ) from None
    return st
