"""Remote refs (``hf:``, ``https://``): plan -> transfer -> verify -> lay out -> catalog.

Called by ``ModelProvisioner`` with the model lock held. Fetchers plan; the transfer engine brings bytes
into the blob store (verified against the source's digest while streaming); this module checks what only
the whole set can show (shard completeness, git blob ids, the repo digest, the user's digest), builds the
engine view and commits the catalog entry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import failpoints
from .catalog import CatalogEntry, EntryFile, Lifecycle, VerificationRecord, now_ms
from .digest import Digest
from .errors import CorruptModel, DigestMismatch, InvalidInput, NotFound, ProvisionerError, VerificationFailed
from .fetchers import FetchPlan, RemoteFile
from .formats import FormatInfo, inspect_file
from .formats.gguf import SPLIT_NAME_RE
from .formats.transformers import check_complete, shards_from_index, summarize
from .hashing import FileHash, git_blob_sha1, hash_file
from .locks import fetch_slot
from .paths import check_no_file_dir_clash
from .redact import redact_url
from .refs import HfRef, OciRef, S3Ref, UrlRef
from .store import repo_digest
from .transfer import NotModified, TransferOutcome, TransferSpec

if TYPE_CHECKING:
    from .provisioner import FetchOptions, ModelProvisioner, ResolvedModel
    from .transfer import ProgressCallback

log = logging.getLogger("model_provisioner")
RemoteRef = HfRef | UrlRef | S3Ref | OciRef
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
    ref: RemoteRef,
    entry: CatalogEntry | None,
    digest: Digest | None,
    strict: bool,
    options: FetchOptions,
) -> ResolvedModel:
    from .provisioner import _Check, _resolved

    start = time.monotonic()
    previous_active = entry if entry is not None and entry.lifecycle is Lifecycle.ACTIVE else None
    closers: list[Any] = []
    try:
        # what the caller asked for is what the entry records; a mirror's digest is only checked against
        user_digest, user_strict = digest, strict
        plan = None if options.refresh else plan_from_mirrors(prov, ref, closers)
        if plan is None:
            plan = _plan_origin(prov, ref, digest, strict, options, previous_active, closers)
        else:
            # the mirror's copy must be the bytes the origin was verified to have when it was pushed
            mirrored = Digest.parse(plan.annotations["org.model-provisioner.digest"])
            if digest is None:
                digest, strict = mirrored, True
            elif strict and digest != mirrored:
                raise DigestMismatch(
                    ref.id, str(digest), str(mirrored), "the mirror holds another version; nothing was downloaded"
                )
        plan = _check_user_digest_against_source(ref, plan, digest, strict)
        base = prov._pending(ref, entry, "", user_digest, user_strict)
        try:
            with fetch_slot(prov.store.locks_dir, prov.settings.max_parallel_fetches, prov.settings.lock_timeout_s):
                failpoints.failpoint("fetch.slot")
                fetched = _fetch_all(prov, ref, plan, options.progress)
            failpoints.failpoint("remote.fetched")
            _check_git_ids(prov, ref, plan, fetched)
            files = _materialise(prov, ref, plan, fetched)
            result = _lay_out(prov, ref, plan, files, digest, strict)
            if prov.settings.require_signature:
                result[6]["signature"] = _check_signature(prov, ref, result)
        except NotModified:
            assert previous_active is not None
            now = now_ms()
            prov.catalog.put(replace(previous_active, last_verified_ms=now, last_used_ms=now))
            log.info("%s: not modified at the source; kept the cached copy", ref.id)
            return replace(_resolved(previous_active, from_cache=True), origin="not modified at the source (HTTP 304)")
        except ProvisionerError as exc:
            if previous_active is not None and options.refresh:
                prov.catalog.put(previous_active)  # a failed refresh never loses a good copy
                raise
            reason = exc.reason if isinstance(exc, VerificationFailed) else exc.code
            prov._fail(base, _Check("fail", reason, exc), None, 0)
            raise
    finally:
        for closer in closers:
            closer.close()
    local_path, entry_digest, size, fmt, blob, entry_files, extra, check = result
    bytes_fetched = sum(o.bytes_fetched for o in fetched.values())
    outcome0 = next(iter(fetched.values()))
    metadata: dict[str, Any] = {
        **fmt.metadata,
        **plan.metadata,
        **extra,
        "format": fmt.format,
        "layout": extra.get("layout", plan.layout),
        "source": plan.metadata.get("source")
        or (redact_url(plan.files[0].sources[-1].url) if plan.layout == "file" else ref.id),
        "include": list(options.include),
        "exclude": list(options.exclude),
    }
    if plan.revision:
        metadata.setdefault("revision", plan.revision)
    if isinstance(ref, UrlRef):  # validators for a conditional --refresh (other schemes pin digests)
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
    prov.catalog.put(active, entry_files)
    prov._record(VerificationRecord(active.id, now, check.result, check.reason, entry_digest, bytes_fetched))
    if entry is not None:
        _drop_superseded(prov, entry, active, previous_files)
    log.info(
        "%s: %s in %d ms (%d bytes fetched)", ref.id, check.reason, (time.monotonic() - start) * 1000, bytes_fetched
    )
    origin = None
    if plan.metadata.get("mirror"):
        origin = f"from mirror {plan.metadata['mirror']}"
    elif options.refresh and previous_active is not None:
        origin = "unchanged at the source" if previous_active.digest == entry_digest else "changed at the source"
    return replace(_resolved(active, from_cache=False), bytes_fetched=bytes_fetched, origin=origin)


def _plan_origin(
    prov: ModelProvisioner,
    ref: RemoteRef,
    digest: Digest | None,
    strict: bool,
    options: FetchOptions,
    previous_active: CatalogEntry | None,
    closers: list[Any],
) -> FetchPlan:
    pinned = digest.hex if digest is not None and digest.algo == "sha256" and strict else None
    if isinstance(ref, HfRef):
        from .fetchers.hf import plan_hf

        return plan_hf(ref, prov.settings, include=options.include, exclude=options.exclude)
    if isinstance(ref, S3Ref):
        from .fetchers.s3 import plan_s3

        return plan_s3(ref, prov.settings, expected_sha256=pinned)
    if isinstance(ref, OciRef):
        from .fetchers.oci import plan_oci
        from .oci import RegistryClient

        client = RegistryClient(ref.registry, prov.settings)
        closers.append(client)
        return plan_oci(ref, prov.settings, client)
    from .fetchers.https import plan_https

    return plan_https(
        ref,
        prov.settings,
        expected_sha256=pinned,
        previous_metadata=previous_active.metadata if previous_active else None,
        refresh=options.refresh,
    )


def plan_from_mirrors(prov: ModelProvisioner, ref: RemoteRef, closers: list[Any]) -> FetchPlan | None:
    """The first team mirror (``mirrors.models``) that holds a push of ``ref``; None when none does."""
    from .fetchers.oci import plan_oci
    from .fetchers.s3 import plan_s3
    from .mirror import mirror_ref
    from .oci import RegistryClient

    for root in prov.settings.model_mirrors:
        location = mirror_ref(root, ref.id)
        try:
            if isinstance(location, OciRef):
                client = RegistryClient(location.registry, prov.settings)
                closers.append(client)
                plan = plan_oci(location, prov.settings, client)
            else:
                plan = plan_s3(location, prov.settings)
        except NotFound:
            log.info("%s: not in mirror %s", ref.id, root)
            continue
        except ProvisionerError as exc:
            log.warning("%s: mirror %s failed (%s); trying the next source", ref.id, root, exc)
            continue
        if plan.annotations.get("org.model-provisioner.source-id") != ref.id or not plan.annotations.get(
            "org.model-provisioner.digest"
        ):
            log.warning("%s: %s holds another model (or no digest); skipping this mirror", ref.id, location.id)
            continue
        log.info("%s: pulling from mirror %s", ref.id, location.id)
        metadata = {**plan.metadata, "source": ref.id, "mirror": location.id}
        return replace(plan, metadata=metadata)
    return None


def _check_user_digest_against_source(
    ref: RemoteRef, plan: FetchPlan, digest: Digest | None, strict: bool
) -> FetchPlan:
    """A pinned digest that contradicts the source's own digest fails before a byte is downloaded."""
    if digest is None or digest.algo != "sha256" or plan.layout != "file" or len(plan.files) != 1:
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
    return path.endswith((".safetensors", ".gguf", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".plan"))


def _fetch_all(
    prov: ModelProvisioner, ref: RemoteRef, plan: FetchPlan, progress: ProgressCallback | None
) -> dict[str, TransferOutcome]:
    aggregate = _Aggregate(plan.total_size, progress)

    def one(file: RemoteFile) -> TransferOutcome:
        name = ref.id if plan.layout == "file" else f"{ref.id} [{file.path}]"
        if file.unpack and file.sha256 and not plan.conditional and prov.store.unpacked_members(file.sha256):
            # an archive layer already unpacked for another model: its files are in the store, verified
            blob = prov.store.blob_path(file.sha256)
            return TransferOutcome(file.sha256, file.size or 0, blob, 0, source="unpacked layer")
        if prov.settings.adopt_caches and file.sha256 and not prov.store.has_blob(file.sha256):
            _adopt_from_other_caches(prov, file.sha256, name)
        spec = TransferSpec(
            file.sources, name=name, expected_size=file.size, expected_sha256=file.sha256, conditional=plan.conditional
        )
        return prov.engine.fetch(spec, aggregate.for_file(file.path))

    small = [f for f in plan.files if not (_is_weight(f.path) or f.unpack)]
    large = [f for f in plan.files if _is_weight(f.path) or f.unpack]
    results: dict[str, TransferOutcome] = {}
    try:
        # on Ctrl-C the transfers are cancelled before each pool waits for its workers (partials are kept)
        with ThreadPoolExecutor(max_workers=4) as pool, _cancel_on_interrupt(prov):
            for file, outcome in zip(small, pool.map(one, small), strict=True):
                results[file.path] = outcome
            if INDEX in results:
                shards = shards_from_index(results[INDEX].blob.read_bytes(), f"{ref.id} [{INDEX}]")
                check_complete(shards, [f.path for f in plan.files], plan.available, ref.id)
            # weights one or two at a time: each large file already uses parallel ranges
            with ThreadPoolExecutor(max_workers=2) as big_pool, _cancel_on_interrupt(prov):
                for file, outcome in zip(large, big_pool.map(one, large), strict=True):
                    results[file.path] = outcome
    except (KeyboardInterrupt, SystemExit):
        prov.engine.resume_after_cancel()  # the pools are done: later transfers in this process may run
        raise
    return results


@contextlib.contextmanager
def _cancel_on_interrupt(prov: ModelProvisioner) -> Iterator[None]:
    """Entered after a thread pool, so it exits first: cancel the transfers, then the pool waits for them."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        prov.engine.cancel()
        raise


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
    prov: ModelProvisioner, ref: RemoteRef, plan: FetchPlan, fetched: dict[str, TransferOutcome]
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


def _materialise(
    prov: ModelProvisioner, ref: RemoteRef, plan: FetchPlan, fetched: dict[str, TransferOutcome]
) -> list[EntryFile]:
    """The model's files as (path, blob, size): fetched files as they are, archive layers unpacked."""
    from .unpack import unpack_into_store

    files: dict[str, EntryFile] = {}
    ratio = prov.settings.transfer.max_unpack_ratio
    for file in plan.files:
        outcome = fetched[file.path]
        if file.unpack is None:
            files[file.path] = EntryFile(file.path, outcome.sha256, outcome.size)
            continue
        where = f"{ref.id} [layer sha256:{outcome.sha256[:12]}]"
        members = prov.store.unpacked_members(outcome.sha256)
        if members is None:
            try:
                members = unpack_into_store(prov.store, outcome.blob, file.unpack, where, max_ratio=ratio)
            except FileNotFoundError:
                # another model sharing this layer unpacked it and dropped the archive meanwhile
                members = prov.store.unpacked_members(outcome.sha256)
                if members is None:
                    spec = TransferSpec(file.sources, name=where, expected_size=file.size, expected_sha256=file.sha256)
                    outcome = prov.engine.fetch(spec)
                    members = unpack_into_store(prov.store, outcome.blob, file.unpack, where, max_ratio=ratio)
            prov.store.record_unpacked(outcome.sha256, members)
        for path, sha_hex, size in members:
            if path in files:
                raise CorruptModel(ref.id, f"{path!r} is in more than one layer")
            files[path] = EntryFile(path, sha_hex, size)
        if prov.store.has_blob(outcome.sha256) and prov.catalog.blob_refcount(outcome.sha256) == 0:
            prov.store.remove_blob(outcome.sha256)  # the archive itself is not part of any view
    if not files:
        raise CorruptModel(ref.id, "the source holds no files")
    check_no_file_dir_clash(list(files), ref.id)
    return list(files.values())


def detect_layout(paths: list[str], subject: str) -> str:
    """How a set of files is laid out for an engine, decided from their names."""
    from .formats.triton import find_repository_root

    if find_repository_root(paths) is not None:
        return "triton"
    if any(p.endswith(".safetensors") for p in paths) or "config.json" in paths:
        return "transformers"
    if len(paths) == 1:
        return "file"  # one file of any format (GGUF, ONNX, a .bin): laid out like an https:// file
    ggufs = [p for p in paths if p.endswith(".gguf")]
    if ggufs:
        return "gguf-split" if all(SPLIT_NAME_RE.search(p) for p in ggufs) and len(ggufs) > 1 else "gguf-set"
    raise CorruptModel(
        subject,
        "no GGUF, safetensors or Triton repository among the files ("
        + ", ".join(sorted(paths)[:8])
        + (", ..." if len(paths) > 8 else "")
        + ")",
    )


def _lay_out(
    prov: ModelProvisioner,
    ref: RemoteRef,
    plan: FetchPlan,
    files: list[EntryFile],
    digest: Digest | None,
    strict: bool,
) -> tuple[Path, str, int, FormatInfo, str | None, list[EntryFile] | None, dict[str, Any], Any]:
    from .provisioner import _compare, _ref_namespace

    namespace = _ref_namespace(ref)
    total = sum(f.size_bytes for f in files)
    extra: dict[str, Any] = {}
    source_verified = all(f.sha256 is not None or f.git_sha1 is not None for f in plan.files)
    layout = plan.layout if plan.layout != "auto" else detect_layout([f.path for f in files], ref.id)
    extra["layout"] = layout

    if layout == "file":
        file = files[0]
        blob_path = prov.store.blob_path(file.blob)
        name = file.path.rsplit("/", 1)[-1]
        fmt = _inspect(blob_path, ref.id, name, prov, file.blob)
        entry_digest = f"sha256:{file.blob}"
        extra_algos = [digest.algo] if digest is not None and digest.algo != "sha256" else []
        known = (
            hash_file(blob_path, extra_algos)
            if extra_algos
            else FileHash(Digest.parse(entry_digest), file.size_bytes, {})
        )
        check = _compare(ref.id, known, digest, strict, owned=True)
        _raise_or_drop(prov, check, [file.blob])
        local = prov._link_view(ref, name, file.blob, fmt)
        _mark_source(check, source_verified, digest)
        return local, entry_digest, file.size_bytes, fmt, file.blob, None, extra, check

    if digest is not None and digest.algo != "sha256":
        raise InvalidInput(f"{ref.id}: a multi-file model is pinned by its sha256 repo digest, not {digest.algo}")
    if layout in ("gguf-split", "gguf-set"):
        # a split GGUF's parts, or a GGUF with companions (license, mmproj, template).
        # HF split parts are laid out by file name; other sources keep their relative paths
        by_name = isinstance(ref, HfRef | UrlRef)
        names = [(f.path.rsplit("/", 1)[-1] if by_name else f.path, f.blob, f.size_bytes) for f in files]
        entry_digest = repo_digest(names)
        check = _compare(ref.id, FileHash(Digest.parse(entry_digest), total, {}), digest, strict, owned=True)
        _raise_or_drop(prov, check, [f.blob for f in files])
        ggufs = sorted(
            (n for n in names if n[0].endswith(".gguf") and "mmproj" not in n[0].lower()), key=lambda n: n[0]
        )
        main_name, main_blob, _ = (ggufs or [n for n in names if n[0].endswith(".gguf")])[0]
        fmt = _inspect(prov.store.blob_path(main_blob), ref.id, main_name, prov, main_blob)
        split = fmt.metadata.get("split", {})
        parts = [n for n in names if SPLIT_NAME_RE.search(n[0])]
        if isinstance(split, dict) and split.get("count") not in (None, len(parts) or len(names)):
            raise CorruptModel(ref.id, f"split GGUF declares {split.get('count')} parts but {len(parts)} were found")
        stem = SPLIT_NAME_RE.sub("", main_name.rsplit("/", 1)[-1])
        tree = prov.store.link_tree(
            [(n, b) for n, b, _ in names], f"gguf/{namespace}/{stem}@{entry_digest.split(':')[1]}"
        )
        extra["view_dir"] = str(tree)
        extra["parts"] = [n for n, _, _ in names]
        _mark_source(check, source_verified, digest)
        view_files = [EntryFile(n, b, sz) for n, b, sz in names]  # paths as laid out in the view directory
        return tree / main_name, entry_digest, total, fmt, None, view_files, extra, check

    entry_digest = repo_digest([(f.path, f.blob, f.size_bytes) for f in files])
    check = _compare(ref.id, FileHash(Digest.parse(entry_digest), total, {}), digest, strict, owned=True)
    _raise_or_drop(prov, check, [f.blob for f in files])
    extra["repo_digest"] = entry_digest

    if layout == "triton":
        from .formats.triton import find_repository_root, inspect_repository

        paths = [f.path for f in files]
        root = find_repository_root(paths) or ""
        tree = prov.store.link_tree(
            [(f.path, f.blob) for f in files], f"triton/{namespace}@{plan.revision or entry_digest.split(':')[1][:16]}"
        )
        try:
            meta = inspect_repository(tree, root, paths, ref.id)
        except ProvisionerError:
            prov.store.remove_tree(tree)
            for f in files:
                if prov.catalog.blob_refcount(f.blob) == 0:
                    prov.store.remove_blob(f.blob)
            raise
        extra["view_dir"] = str(tree)
        _mark_source(check, source_verified, digest)
        return tree / root if root else tree, entry_digest, total, FormatInfo("triton", meta), None, files, extra, check

    # transformers repository
    for f in files:
        if f.path.endswith(".safetensors"):
            _inspect(prov.store.blob_path(f.blob), f"{ref.id} [{f.path}]", f.path, prov, f.blob)
    revision = plan.revision or entry_digest.split(":")[1][:16]
    tree = prov.store.link_tree([(f.path, f.blob) for f in files], f"transformers/{namespace}@{revision}")
    meta = summarize(tree, [f.path for f in files])
    fmt = FormatInfo("transformers", meta)
    extra["view_dir"] = str(tree)
    if meta.get("trust_remote_code"):
        check.warnings.append(
            f"{ref.id} needs custom code (auto_map or *.py files); "
            + (
                "allow_remote_code is on now: a handoff written while it is on sets trust_remote_code=true"
                if prov.settings.allow_remote_code
                else "handoffs set trust_remote_code=false until you review it and set allow_remote_code: true"
            )
        )
    _mark_source(check, source_verified, digest)
    return tree, entry_digest, total, fmt, None, files, extra, check


def _check_signature(prov: ModelProvisioner, ref: RemoteRef, result: tuple[Any, ...]) -> str:
    """A multi-file model carries ``model.sig`` in its file set; verify its view before it becomes Active.
    On failure the view is removed (nothing half-trusted stays at a final path)."""
    from .signatures import verify_signature

    local_path, _digest, _size, _fmt, blob, _files, extra, _check = result
    view = extra.get("view_dir")
    try:
        if not isinstance(view, str):
            raise VerificationFailed(
                f"{ref.id}: a single-file model from {ref.scheme}: carries no signature; sign and publish it as a "
                "directory (model files + model.sig), or drop --require-signature",
                reason="unsigned",
            )
        return verify_signature(prov.settings, Path(view), ref.id)
    except VerificationFailed:
        if isinstance(view, str):
            prov.store.remove_tree(view)
        elif blob:
            prov.store.remove_view(str(local_path))
        raise


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


def _fingerprint(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _drop_superseded(prov: ModelProvisioner, old: CatalogEntry, new: CatalogEntry, old_files: list[EntryFile]) -> None:
    """After a new revision replaced an entry: remove the old view and the old blobs nobody uses any more."""
    old_tree = old.metadata.get("view_dir")
    if isinstance(old_tree, str) and old_tree and old_tree != new.metadata.get("view_dir"):
        if not prov.view_in_use(old_tree, new.id):
            prov.store.remove_tree(old_tree)
    elif (
        old.blob
        and old.local_path
        and old.local_path != new.local_path
        and not prov.view_in_use(old.local_path, new.id)
    ):
        prov.store.remove_view(old.local_path)
    candidates = {old.blob} if old.blob else set()
    candidates |= {f.blob for f in old_files}
    for blob in candidates:
        if blob and prov.catalog.blob_refcount(blob) == 0:
            prov.store.remove_blob(blob)
