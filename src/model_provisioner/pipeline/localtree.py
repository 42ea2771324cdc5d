"""Local directories as models (a Triton model repository, or a transformers repo), registered in place.

Like a local file, a directory is never copied: its files are hashed once, the set gets a repo digest and the
entry records a *tree fingerprint* (``verify/trees.py``). An unchanged fingerprint answers the next ``ensure``
without hashing; any change (a file edited, added, removed or renamed) re-hashes the set. A directory answers
a request by the same rule as a file (``verify.compare.still_answers``) and keeps its pin the same way
(``verify.compare.carried_pin``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from model_provisioner.core import failpoints
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import InvalidInput, ProvisionerError, VerificationFailed
from model_provisioner.core.hashing import FileHash, hash_file, repo_digest
from model_provisioner.core.refs import FileRef
from model_provisioner.core.units import now_ms
from model_provisioner.core.vocab import CheckResult
from model_provisioner.formats import FormatInfo
from model_provisioner.formats.layout import detect_layout
from model_provisioner.formats.transformers import summarize
from model_provisioner.formats.triton import find_repository_root, inspect_repository
from model_provisioner.pipeline.context import Workspace
from model_provisioner.storage.catalog import CatalogEntry
from model_provisioner.verify.compare import Check, carried_pin, compare, prior_pin, still_answers
from model_provisioner.verify.results import ResolvedModel, resolved_from
from model_provisioner.verify.signatures import verify_signature
from model_provisioner.verify.trees import scan_tree, tree_fingerprint

log = logging.getLogger("model_provisioner")


def provision_directory(
    ws: Workspace, ref: FileRef, entry: CatalogEntry | None, digest: Digest | None, strict: bool
) -> ResolvedModel:
    root = ref.local_path
    files = scan_tree(root, ref.id)
    if not files:
        raise InvalidInput(f"{root} is a directory with no files; give a model file or a model repository directory")
    fingerprint = tree_fingerprint(root, files)
    if (
        entry is not None
        and entry.fingerprint == fingerprint
        and still_answers(entry, digest, strict, signature=ws.signature_required(entry.id))
    ):
        return resolved_from(entry, from_cache=True)
    pinned_before = prior_pin(entry)
    digest, strict = carried_pin(entry, digest, strict)
    if digest is not None and digest.algo != "sha256":
        raise InvalidInput(f"{ref.id}: a directory is pinned by its sha256 repo digest, not {digest.algo}")
    paths = [rel for rel, _ in files]
    layout = detect_layout(paths, ref.id)
    if layout not in ("triton", "transformers"):
        raise InvalidInput(
            f"{root} is a directory; give the model file inside it (e.g. {root}/{paths[0]}), or a Triton or "
            "transformers repository directory"
        )
    base = ws.ledger.pending(ref, before=entry, path=str(root), digest=digest, strict=strict)
    start = time.monotonic()
    try:
        hashed = [(rel, hash_file(path, [])) for rel, path in files]
        if tree_fingerprint(root, files) != fingerprint:
            raise VerificationFailed(
                f"{ref.id}: the directory changed while it was being hashed; run ensure again", reason="changed"
            )
        entry_digest = repo_digest([(rel, h.sha256.hex, h.size_bytes) for rel, h in hashed])
        total = sum(h.size_bytes for _, h in hashed)
        check = compare(ref.id, FileHash(Digest.parse(entry_digest), total, {}), digest, strict=strict, owned=False)
        if check.result is CheckResult.FAIL:
            assert check.error is not None
            base = replace(base, expected_digest=pinned_before)  # a digest that failed never becomes the pin
            raise check.error
        meta: dict[str, Any]
        if layout == "triton":
            repo_root = find_repository_root(paths) or ""
            meta = inspect_repository(root, repo_root, paths, ref.id)
            local = root / repo_root if repo_root else root
            fmt = FormatInfo("triton", meta)
        else:
            meta = summarize(root, paths)
            local = root
            fmt = FormatInfo("transformers", meta)
        signed = ws.checked_signature(ref.id, lambda: verify_signature(ws.settings, root, ref.id))
        if signed is not None:
            meta = {**meta, "signature": signed}
    except ProvisionerError as exc:
        ws.ledger.fail(base, Check.failed(exc))
        raise
    for message in check.warnings:
        log.warning(message)
    failpoints.failpoint("ensure.before_commit")
    active = replace(
        base,
        local_path=str(local),
        digest=entry_digest,
        size_bytes=total,
        format=fmt.format,
        last_verified_ms=now_ms(),
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
    )
    active = ws.ledger.commit(active, check, total)
    log.info("%s: %s (%d files) in %d ms", ref.id, check.reason, len(files), (time.monotonic() - start) * 1000)
    return resolved_from(active, from_cache=False)
