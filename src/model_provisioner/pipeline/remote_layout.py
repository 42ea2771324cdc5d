"""Laying out fetched files for their engine: one file, a split GGUF or GGUF set, a Triton repository or a
transformers repository; each compared with the user's digest (one ``compare``) before it is viewed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import CorruptModel, InvalidInput, ProvisionerError, VerificationFailed
from model_provisioner.core.hashing import FileHash, hash_file, repo_digest
from model_provisioner.core.refs import HfRef, ModelRef, UrlRef
from model_provisioner.core.vocab import CheckResult
from model_provisioner.formats import FormatInfo, inspect_file
from model_provisioner.formats.gguf import SPLIT_NAME_RE
from model_provisioner.formats.layout import detect_layout
from model_provisioner.formats.pickle_scan import disallowed, is_pickle_weights, pickle_imports
from model_provisioner.formats.transformers import summarize
from model_provisioner.formats.triton import find_repository_root, inspect_repository
from model_provisioner.pipeline.context import Workspace
from model_provisioner.sources.plan import FetchPlan
from model_provisioner.storage.catalog import EntryFile
from model_provisioner.storage.safefs import open_in_cache
from model_provisioner.storage.views import ref_namespace
from model_provisioner.verify.compare import Check, compare, mark_source_verified
from model_provisioner.verify.signatures import verify_bundles, verify_signature


@dataclass
class LaidOut:
    """A verified model's place in the cache, ready for the ledger to commit."""

    local_path: Path
    digest: str
    size_bytes: int
    fmt: FormatInfo
    blob: str | None  # one-file models: their blob
    files: list[EntryFile] | None  # multi-file models: their file set, as laid out
    check: Check
    extra: dict[str, Any] = field(default_factory=dict)


def lay_out(
    ws: Workspace, ref: ModelRef, plan: FetchPlan, files: list[EntryFile], digest: Digest | None, strict: bool
) -> LaidOut:
    source_verified = all(f.sha256 is not None or f.git_sha1 is not None for f in plan.files)
    layout = plan.layout if plan.layout != "auto" else detect_layout([f.path for f in files], ref.id)
    if layout == "file":
        laid = _one_file(ws, ref, files[0], digest, strict)
    else:
        if digest is not None and digest.algo != "sha256":
            raise InvalidInput(f"{ref.id}: a multi-file model is pinned by its sha256 repo digest, not {digest.algo}")
        if layout in ("gguf-split", "gguf-set"):
            laid = _gguf_set(ws, ref, files, digest, strict)
        else:
            laid = _repository(ws, ref, plan, files, digest, strict, layout)
    laid.extra["layout"] = layout
    mark_source_verified(laid.check, source_verified, digest)
    return laid


def _one_file(ws: Workspace, ref: ModelRef, file: EntryFile, digest: Digest | None, strict: bool) -> LaidOut:
    blob_path = ws.store.blob_path(file.blob)
    name = file.path.rsplit("/", 1)[-1]
    fmt = _inspect(ws, blob_path, ref.id, name, file.blob)
    entry_digest = f"sha256:{file.blob}"
    extra_algos = [digest.algo] if digest is not None and digest.algo != "sha256" else []
    known = (
        hash_file(blob_path, extra_algos) if extra_algos else FileHash(Digest.parse(entry_digest), file.size_bytes, {})
    )
    check = compare(ref.id, known, digest, strict=strict, owned=True)
    _raise_or_drop(ws, check, [file.blob])
    local = ws.ledger.link_blob_view(ref, name, file.blob, fmt)
    return LaidOut(local, entry_digest, file.size_bytes, fmt, file.blob, None, check)


def _gguf_set(ws: Workspace, ref: ModelRef, files: list[EntryFile], digest: Digest | None, strict: bool) -> LaidOut:
    """A split GGUF's parts, or a GGUF with companions (license, mmproj, template). HF split parts are laid out
    by file name; other sources keep their relative paths."""
    total = sum(f.size_bytes for f in files)
    by_name = isinstance(ref, HfRef | UrlRef)
    names = [(f.path.rsplit("/", 1)[-1] if by_name else f.path, f.blob, f.size_bytes) for f in files]
    entry_digest = repo_digest(names)
    check = compare(ref.id, FileHash(Digest.parse(entry_digest), total, {}), digest, strict=strict, owned=True)
    _raise_or_drop(ws, check, [f.blob for f in files])
    ggufs = sorted((n for n in names if n[0].endswith(".gguf") and "mmproj" not in n[0].lower()), key=lambda n: n[0])
    main_name, main_blob, _ = (ggufs or [n for n in names if n[0].endswith(".gguf")])[0]
    fmt = _inspect(ws, ws.store.blob_path(main_blob), ref.id, main_name, main_blob)
    split = fmt.metadata.get("split", {})
    parts = [n for n in names if SPLIT_NAME_RE.search(n[0])]
    if isinstance(split, dict) and split.get("count") not in (None, len(parts) or len(names)):
        raise CorruptModel(ref.id, f"split GGUF declares {split.get('count')} parts but {len(parts)} were found")
    stem = SPLIT_NAME_RE.sub("", main_name.rsplit("/", 1)[-1])
    tree = ws.store.link_tree(
        [(n, b) for n, b, _ in names], f"gguf/{ref_namespace(ref)}/{stem}@{entry_digest.split(':')[1]}"
    )
    view_files = [EntryFile(n, b, sz) for n, b, sz in names]  # paths as laid out in the view directory
    extra = {"view_dir": str(tree), "parts": [n for n, _, _ in names]}
    return LaidOut(tree / main_name, entry_digest, total, fmt, None, view_files, check, extra)


def _repository(
    ws: Workspace,
    ref: ModelRef,
    plan: FetchPlan,
    files: list[EntryFile],
    digest: Digest | None,
    strict: bool,
    layout: str,
) -> LaidOut:
    """A Triton model repository or a transformers repository, viewed as a tree of hard links."""
    namespace = ref_namespace(ref)
    total = sum(f.size_bytes for f in files)
    entry_digest = repo_digest([(f.path, f.blob, f.size_bytes) for f in files])
    check = compare(ref.id, FileHash(Digest.parse(entry_digest), total, {}), digest, strict=strict, owned=True)
    _raise_or_drop(ws, check, [f.blob for f in files])
    revision = plan.revision or entry_digest.split(":")[1][:16]
    extra: dict[str, Any] = {"repo_digest": entry_digest}
    if layout == "triton":
        paths = [f.path for f in files]
        root = find_repository_root(paths) or ""
        tree = ws.store.link_tree([(f.path, f.blob) for f in files], f"triton/{namespace}@{revision}")
        try:
            meta = inspect_repository(tree, root, paths, ref.id)
        except ProvisionerError:
            ws.store.remove_tree(tree)
            ws.ledger.drop_unreferenced(f.blob for f in files)
            raise
        extra["view_dir"] = str(tree)
        local = tree / root if root else tree
        return LaidOut(local, entry_digest, total, FormatInfo("triton", meta), None, files, check, extra)
    if layout == "engine":  # an engine pushed by `engines push`: installed by engines/artifacts.py, never served
        tree = ws.store.link_tree([(f.path, f.blob) for f in files], f"engine/{namespace}@{revision}")
        extra["view_dir"] = str(tree)
        return LaidOut(tree, entry_digest, total, FormatInfo("engine", {}), None, files, check, extra)
    for f in files:
        if f.path.endswith(".safetensors"):
            _inspect(ws, ws.store.blob_path(f.blob), f"{ref.id} [{f.path}]", f.path, f.blob)
        elif is_pickle_weights(f.path):
            _check_pickle(ws.store.blob_path(f.blob), f"{ref.id} [{f.path}]")
    tree = ws.store.link_tree([(f.path, f.blob) for f in files], f"transformers/{namespace}@{revision}")
    meta = summarize(tree, [f.path for f in files])
    extra["view_dir"] = str(tree)
    if meta.get("trust_remote_code"):
        check.warnings.append(
            f"{ref.id} needs custom code (auto_map or *.py files); "
            + (
                "allow_remote_code is on now: a handoff written while it is on sets trust_remote_code=true"
                if ws.settings.allow_remote_code
                else "handoffs set trust_remote_code=false until you review it and set allow_remote_code: true"
            )
        )
    return LaidOut(tree, entry_digest, total, FormatInfo("transformers", meta), None, files, check, extra)


def _check_pickle(blob: Path, subject: str) -> None:
    """Pickle weights (fetched because allow_pickle is on) import only what a tensor state dict needs."""
    fd = open_in_cache(blob, os.O_RDONLY, single_link=False)
    with os.fdopen(fd, "rb") as stream:
        bad = disallowed(pickle_imports(stream))
    if bad:
        raise VerificationFailed(
            f"{subject}: the pickle imports {', '.join(bad[:6])} when it is loaded (a tensor state dict needs only "
            "torch's rebuild functions); refused",
            reason="unsafe_model",
        )


def check_signature(
    ws: Workspace,
    ref: ModelRef,
    laid: LaidOut,
    published: tuple[bytes, ...],
    files: list[EntryFile],
    *,
    enforce: bool = True,
) -> str:
    """Verify the model before it becomes Active: against the signatures published beside it (``push --sign``:
    OCI referrers, an S3 mirror's signature) when there are any, else the ``model.sig`` a multi-file model
    carries in its file set. On failure under ``enforce`` the view is removed (nothing half-trusted stays at a
    final path); under the policy's ``warn`` it stays: the model is provisioned, its entry saying the signature
    was not verified."""
    view = laid.extra.get("view_dir")
    try:
        if published:
            staged = [(f.path, ws.store.blob_path(f.blob)) for f in files]
            return verify_bundles(ws.settings, staged, ws.store.partial_dir, list(published), ref.id)
        if not isinstance(view, str):
            raise VerificationFailed(
                f"{ref.id}: a single-file model from {ref.scheme}: carries no signature; sign and publish it as a "
                "directory (model files + model.sig), or drop --require-signature",
                reason="unsigned",
            )
        return verify_signature(ws.settings, Path(view), ref.id)
    except VerificationFailed:
        if not enforce:
            raise
        if isinstance(view, str):
            ws.store.remove_tree(view)
        elif laid.blob:
            ws.store.remove_view(str(laid.local_path))
        raise


def _raise_or_drop(ws: Workspace, check: Check, blobs: list[str]) -> None:
    if check.result is not CheckResult.FAIL:
        return
    ws.ledger.drop_unreferenced(blobs)
    assert check.error is not None
    raise check.error


def _inspect(ws: Workspace, path: Path, subject: str, name: str, blob: str) -> FormatInfo:
    try:
        return inspect_file(path, subject, name=name)
    except (CorruptModel, ProvisionerError):
        ws.ledger.drop_unreferenced([blob])
        raise
