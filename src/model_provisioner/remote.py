"""Remote refs (``hf:``, ``https://``): plan -> transfer -> verify -> lay out -> catalog.

Called by ``ModelProvisioner`` with the model lock held. Fetchers plan; the transfer engine brings bytes
into the blob store (verified against the source's digest while streaming); this module checks what only
the whole set can show (shard completeness, git blob ids, the repo digest, the user's digest), builds the
engine view and commits the catalog entry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import failpoints
from .catalog import CatalogEntry, EntryFile, Lifecycle, VerificationRecord, now_ms
from .digest import Digest
from .errors import CorruptModel, DigestMismatch, InvalidInput, ProvisionerError, VerificationFailed
from .fetchers import FetchPlan, RemoteFile
from .formats import FormatInfo, inspect_file
from .formats.gguf import SPLIT_NAME_RE
from .formats.transformers import check_complete, shards_from_index, summarize
from .hashing import FileHash, git_blob_sha1, hash_file
from .locks import fetch_slot
from .redact import redact_url
from .refs import HfRef, UrlRef
from .store import repo_digest
from .transfer import NotModified, TransferOutcome, TransferSpec

if TYPE_CHECKING:
    from .provisioner import FetchOptions, ModelProvisioner, ResolvedModel
    from .transfer import ProgressCallback

log = logging.getLogger("model_provisioner")
INDEX = "model.safetensors.index.json"


class _Aggregate:
    """Sums per-file progress into one (done, total) callback for the whole plan."""

    def __init__(self, total: int | None, callback: ProgressCallback | None) -> None:
        self.total = total
        self.callback = callback
        self.done: dict[str, int] = {}
        self.lock = threading.Lock()

    def for_file(self, path: str) -> ProgressCallback | None:
        if self.callback is None:
            return None

        def update(done: int, _total: int | None) -> None:
            with self.lock:
                self.done[path] = done
                overall = sum(self.done.values())
            assert self.callback is not None
            self.callback(overall, self.total)

        return update


def provision_remote(
    prov: ModelProvisioner,
    ref: HfRef | UrlRef,
    entry: CatalogEntry | None,
    digest: Digest | None,
    strict: bool,
    options: FetchOptions,
) -> ResolvedModel:
    from .fetchers.hf import plan_hf
    from .fetchers.https import plan_https
    from .provisioner import _Check, _resolved

    start = time.monotonic()
    previous_active = entry if entry is not None and entry.lifecycle is Lifecycle.ACTIVE else None
    if isinstance(ref, HfRef):
        plan = plan_hf(ref, prov.settings, include=options.include, exclude=options.exclude)
    else:
        pinned = digest.hex if digest is not None and digest.algo == "sha256" and strict else None
        plan = plan_https(
            ref,
            prov.settings,
            expected_sha256=pinned,
            previous_metadata=previous_active.metadata if previous_active else None,
            refresh=options.refresh,
        )
    plan = _check_user_digest_against_source(ref, plan, digest, strict)
    base = prov._pending(ref, entry, "", digest, strict)
    try:
        with fetch_slot(prov.store.locks_dir, prov.settings.max_parallel_fetches, prov.settings.lock_timeout_s):
            failpoints.failpoint("fetch.slot")
            fetched = _fetch_all(prov, ref, plan, options.progress)
        failpoints.failpoint("remote.fetched")
        _check_git_ids(prov, ref, plan, fetched)
        result = _lay_out(prov, ref, plan, fetched, digest, strict)
    except NotModified:
        assert previous_active is not None
        now = now_ms()
        prov.catalog.put(replace(previous_active, last_verified_ms=now, last_used_ms=now))
        log.info("%s: not modified at the source; kept the cached copy", ref.id)
        return _resolved(previous_active, from_cache=True)
    except ProvisionerError as exc:
        if previous_active is not None and options.refresh:
            prov.catalog.put(previous_active)  # a failed refresh never loses a good copy
            raise
        reason = exc.reason if isinstance(exc, VerificationFailed) else exc.code
        prov._fail(base, _Check("fail", reason, exc), None, 0)
        raise
    local_path, entry_digest, size, fmt, blob, files, extra, check = result
    bytes_fetched = sum(o.bytes_fetched for o in fetched.values())
    outcome0 = next(iter(fetched.values()))
    metadata: dict[str, Any] = {
        **fmt.metadata,
        **plan.metadata,
        **extra,
        "format": fmt.format,
        "layout": plan.layout,
        "source": redact_url(plan.files[0].sources[-1].url) if plan.layout == "file" else ref.id,
        "include": list(options.include),
        "exclude": list(options.exclude),
    }
    if outcome0.etag:
        metadata["etag"] = outcome0.etag
    if outcome0.last_modified:
        metadata["last_modified"] = outcome0.last_modified
    for message in check.warnings:
        log.warning(message)
    failpoints.failpoint("ensure.before_commit")
    now = now_ms()
    active = replace(
        base,
        local_path=str(local_path),
        lifecycle=Lifecycle.ACTIVE,
        digest=entry_digest,
        size_bytes=size,
        format=fmt.format,
        verification=check.reason,
        last_verified_ms=now,
        fingerprint=_fingerprint(local_path),
        metadata=metadata,
        blob=blob,
        error=None,
    )
    previous_files = prov.catalog.files(active.id)  # the old revision's set, before it is replaced
    prov.catalog.put(active, files)
    prov._record(VerificationRecord(active.id, now, check.result, check.reason, entry_digest, bytes_fetched))
    if entry is not None:
        _drop_superseded(prov, entry, active, previous_files)
    log.info(
        "%s: %s in %d ms (%d bytes fetched)", ref.id, check.reason, (time.monotonic() - start) * 1000, bytes_fetched
    )
    return replace(_resolved(active, from_cache=False), bytes_fetched=bytes_fetched)


def _check_user_digest_against_source(
    ref: HfRef | UrlRef, plan: FetchPlan, digest: Digest | None, strict: bool
) -> FetchPlan:
    """A pinned digest that contradicts the source's own digest fails before a byte is downloaded."""
    if digest is None or digest.algo != "sha256" or plan.layout != "file":
        return plan
    file = plan.files[0]
    if file.sha256 is not None and file.sha256 != digest.hex and strict:
        raise DigestMismatch(
            ref.id,
            str(digest),
            f"sha256:{file.sha256}",
            "the source publishes a different digest, so nothing was downloaded; check the digest or the revision",
        )
    if file.sha256 is None and strict:
        return replace(plan, files=(replace(file, sha256=digest.hex),))
    return plan


def _is_weight(path: str) -> bool:
    return path.endswith((".safetensors", ".gguf", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx"))


def _fetch_all(
    prov: ModelProvisioner, ref: HfRef | UrlRef, plan: FetchPlan, progress: ProgressCallback | None
) -> dict[str, TransferOutcome]:
    aggregate = _Aggregate(plan.total_size, progress)

    def one(file: RemoteFile) -> TransferOutcome:
        name = ref.id if plan.layout == "file" else f"{ref.id} [{file.path}]"
        if prov.settings.adopt_caches and file.sha256 and not prov.store.has_blob(file.sha256):
            _adopt_from_other_caches(prov, file.sha256, name)
        spec = TransferSpec(
            file.sources, name=name, expected_size=file.size, expected_sha256=file.sha256, conditional=plan.conditional
        )
        return prov.engine.fetch(spec, aggregate.for_file(file.path))

    small = [f for f in plan.files if not _is_weight(f.path)]
    large = [f for f in plan.files if _is_weight(f.path)]
    results: dict[str, TransferOutcome] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for file, outcome in zip(small, pool.map(one, small), strict=True):
            results[file.path] = outcome
        if INDEX in results:
            shards = shards_from_index(results[INDEX].blob.read_bytes(), f"{ref.id} [{INDEX}]")
            check_complete(shards, [f.path for f in plan.files], plan.available, ref.id)
        # weights one or two at a time: each large file already uses parallel ranges
        with ThreadPoolExecutor(max_workers=2) as big_pool:
            for file, outcome in zip(large, big_pool.map(one, large), strict=True):
                results[file.path] = outcome
    return results


def _adopt_from_other_caches(prov: ModelProvisioner, sha_hex: str, name: str) -> None:
    from .lifecycle import find_adoptable

    candidate = find_adoptable(sha_hex)
    if candidate is None:
        return
    try:
        prov.store.import_file(candidate, Digest.sha256(sha_hex), name, link=True)
        log.info("%s: adopted sha256:%s from %s instead of downloading it", name, sha_hex, candidate)
    except ProvisionerError as exc:
        log.warning("%s: %s in another cache does not verify (%s); downloading", name, candidate, exc)


def _check_git_ids(
    prov: ModelProvisioner, ref: HfRef | UrlRef, plan: FetchPlan, fetched: dict[str, TransferOutcome]
) -> None:
    for file in plan.files:
        if file.git_sha1 is None:
            continue
        outcome = fetched[file.path]
        actual = git_blob_sha1(outcome.blob)
        if actual != file.git_sha1:
            if prov.catalog.blob_refcount(outcome.sha256) == 0:
                prov.store.remove_blob(outcome.sha256)
            raise VerificationFailed(
                f"{ref.id} [{file.path}]: git blob id mismatch: the Hub says {file.git_sha1}, the bytes give "
                f"{actual}; deleted the download, try again",
                reason="mismatch",
            )


def _lay_out(
    prov: ModelProvisioner,
    ref: HfRef | UrlRef,
    plan: FetchPlan,
    fetched: dict[str, TransferOutcome],
    digest: Digest | None,
    strict: bool,
) -> tuple[Path, str, int, FormatInfo, str | None, list[EntryFile] | None, dict[str, Any], Any]:
    from .provisioner import _compare, _ref_namespace

    namespace = _ref_namespace(ref)
    files = [EntryFile(f.path, fetched[f.path].sha256, fetched[f.path].size) for f in plan.files]
    total = sum(f.size_bytes for f in files)
    extra: dict[str, Any] = {}
    source_verified = all(f.sha256 is not None or f.git_sha1 is not None for f in plan.files)

    if plan.layout == "file":
        file = plan.files[0]
        outcome = fetched[file.path]
        name = file.path.rsplit("/", 1)[-1]
        fmt = _inspect(outcome.blob, ref.id, name, prov, outcome.sha256)
        entry_digest = f"sha256:{outcome.sha256}"
        extra_algos = [digest.algo] if digest is not None and digest.algo != "sha256" else []
        known = (
            hash_file(outcome.blob, extra_algos)
            if extra_algos
            else FileHash(Digest.parse(entry_digest), outcome.size, {})
        )
        check = _compare(ref.id, known, digest, strict, owned=True)
        _raise_or_drop(prov, check, [outcome.sha256])
        local = prov._link_view(ref, name, outcome.sha256, fmt)
        _mark_source(check, source_verified, digest)
        return local, entry_digest, outcome.size, fmt, outcome.sha256, None, extra, check

    if digest is not None and digest.algo != "sha256":
        raise InvalidInput(f"{ref.id}: a multi-file model is pinned by its sha256 repo digest, not {digest.algo}")
    if plan.layout == "gguf-split":
        names = [(f.path.rsplit("/", 1)[-1], f.blob, f.size_bytes) for f in files]
        entry_digest = repo_digest(names)
        check = _compare(ref.id, FileHash(Digest.parse(entry_digest), total, {}), digest, strict, owned=True)
        _raise_or_drop(prov, check, [f.blob for f in files])
        first_name = names[0][0]
        fmt = _inspect(prov.store.blob_path(files[0].blob), ref.id, first_name, prov, files[0].blob)
        split = fmt.metadata.get("split", {})
        if isinstance(split, dict) and split.get("count") not in (None, len(files)):
            raise CorruptModel(ref.id, f"split GGUF declares {split.get('count')} parts but {len(files)} were found")
        stem = SPLIT_NAME_RE.sub("", first_name)
        tree = prov.store.link_tree(
            [(n, b) for n, b, _ in names], f"gguf/{namespace}/{stem}@{entry_digest.split(':')[1]}"
        )
        extra["view_dir"] = str(tree)
        extra["parts"] = [n for n, _, _ in names]
        _mark_source(check, source_verified, digest)
        view_files = [EntryFile(n, b, sz) for n, b, sz in names]  # paths as laid out in the view directory
        return tree / first_name, entry_digest, total, fmt, None, view_files, extra, check

    # transformers repository
    entry_digest = repo_digest([(f.path, f.blob, f.size_bytes) for f in files])
    check = _compare(ref.id, FileHash(Digest.parse(entry_digest), total, {}), digest, strict, owned=True)
    _raise_or_drop(prov, check, [f.blob for f in files])
    for f in files:
        if f.path.endswith(".safetensors"):
            _inspect(prov.store.blob_path(f.blob), f"{ref.id} [{f.path}]", f.path, prov, f.blob)
    revision = plan.revision or "unknown"
    tree = prov.store.link_tree([(f.path, f.blob) for f in files], f"transformers/{namespace}@{revision}")
    meta = summarize(tree, [f.path for f in files])
    fmt = FormatInfo("transformers", meta)
    extra["view_dir"] = str(tree)
    extra["repo_digest"] = entry_digest
    extra["remote_code_allowed"] = prov.settings.allow_remote_code
    if meta.get("trust_remote_code"):
        check.warnings.append(
            f"{ref.id} needs custom code (auto_map or *.py files); "
            + (
                "allow_remote_code is on: the handoff sets trust_remote_code=true"
                if prov.settings.allow_remote_code
                else "the handoff sets trust_remote_code=false until you review it and set allow_remote_code: true"
            )
        )
    _mark_source(check, source_verified, digest)
    return tree, entry_digest, total, fmt, None, files, extra, check


def _mark_source(check: Any, source_verified: bool, digest: Digest | None) -> None:
    """No user digest, but every byte matched the source's own digest: verified, no advisory warning."""
    if digest is None and source_verified and check.reason == "recorded":
        check.result, check.reason = "pass", "source_verified"
        check.warnings[:] = [w for w in check.warnings if "no expected digest" not in w]


def _raise_or_drop(prov: ModelProvisioner, check: Any, blobs: list[str]) -> None:
    if check.result != "fail":
        return
    for blob in set(blobs):
        if prov.catalog.blob_refcount(blob) == 0:
            prov.store.remove_blob(blob)
    assert check.error is not None
    raise check.error


def _inspect(path: Path, subject: str, name: str, prov: ModelProvisioner, blob: str) -> FormatInfo:
    try:
        return inspect_file(path, subject, name=name)
    except (CorruptModel, ProvisionerError):
        if prov.catalog.blob_refcount(blob) == 0:
            prov.store.remove_blob(blob)
        raise


def _fingerprint(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _drop_superseded(prov: ModelProvisioner, old: CatalogEntry, new: CatalogEntry, old_files: list[EntryFile]) -> None:
    """After a new revision replaced an entry: remove the old view and the old blobs nobody uses any more."""
    old_tree = old.metadata.get("view_dir")
    if isinstance(old_tree, str) and old_tree and old_tree != new.metadata.get("view_dir"):
        prov.store.remove_tree(old_tree)
    elif old.blob and old.local_path and old.local_path != new.local_path:
        prov.store.remove_view(old.local_path)
    candidates = {old.blob} if old.blob else set()
    candidates |= {f.blob for f in old_files}
    for blob in candidates:
        if blob and prov.catalog.blob_refcount(blob) == 0:
            prov.store.remove_blob(blob)
