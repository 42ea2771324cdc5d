"""Remote refs (``hf:``, ``https://``, ``s3://``, ``oci://``): plan -> transfer -> verify -> lay out -> commit.

Called with the model lock held. Sources plan; the transfer engine brings bytes into the blob store (verified
against the source's digest while streaming); this module checks what only the whole set can show (shard
completeness, git blob ids, the user's digest), has the set laid out (``remote_layout``) and commits it
through the ledger.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from model_provisioner.core import failpoints
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import (
    Cancelled,
    CorruptModel,
    NotFound,
    NotModified,
    PolicyDenied,
    ProvisionerError,
    TransferFailed,
    VerificationFailed,
)
from model_provisioner.core.hashing import git_blob_sha1
from model_provisioner.core.paths import check_no_file_dir_clash
from model_provisioner.core.redact import redact_url
from model_provisioner.core.refs import HfRef, OciRef, S3Ref, UrlRef
from model_provisioner.core.units import now_ms
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.formats.transformers import check_complete, shards_from_index
from model_provisioner.pipeline.context import FetchOptions, Workspace
from model_provisioner.pipeline.remote_layout import LaidOut, check_signature, lay_out
from model_provisioner.sources.plan import FetchPlan, RemoteFile
from model_provisioner.sources.table import PlanRequest, plan_origin
from model_provisioner.sources.team_mirrors import ANN_DIGEST, plan_from_mirrors
from model_provisioner.storage.catalog import CatalogEntry, EntryFile
from model_provisioner.storage.locks import fetch_slot
from model_provisioner.storage.othercaches import find_adoptable
from model_provisioner.storage.unpack import unpack_into_store
from model_provisioner.transfer.types import TransferOutcome, TransferSpec
from model_provisioner.verify.compare import Check, strict_mismatch
from model_provisioner.verify.rehash import fingerprint_of
from model_provisioner.verify.results import ResolvedModel, resolved_from

if TYPE_CHECKING:
    from model_provisioner.transfer.types import ProgressCallback

log = logging.getLogger("model_provisioner")
RemoteRef = HfRef | UrlRef | S3Ref | OciRef
INDEX = "model.safetensors.index.json"


class _Aggregate:
    """Sums per-file progress into one (done, total) callback for the whole plan. A total the plan did not
    know (a URL's size) is taken from the files as their responses say it (Content-Length, Content-Range)."""

    def __init__(self, total: int | None, files: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self.files = files
        self.callback = callback
        self.done: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.lock = threading.Lock()

    def for_file(self, path: str) -> ProgressCallback | None:
        if self.callback is None:
            return None

        def update(done: int, total: int | None) -> None:
            with self.lock:
                self.done[path] = done
                if total is not None:
                    self.totals[path] = total
                overall = sum(self.done.values())
                known = self.total
                if known is None and len(self.totals) == self.files:
                    known = sum(self.totals.values())
            assert self.callback is not None
            self.callback(overall, known)

        return update


def never_reached(exc: ProvisionerError) -> bool:
    """The source does not exist or was never reached (404, a name that does not resolve, a refused
    connection, an address the policy refuses): no bytes of it here, nothing to record. Ctrl-C (``Cancelled``)
    and anything after bytes arrived (a digest mismatch) are recorded."""
    return isinstance(exc, (NotFound, PolicyDenied)) or (
        isinstance(exc, TransferFailed) and not isinstance(exc, Cancelled)
    )


def provision_remote(
    ws: Workspace,
    ref: RemoteRef,
    entry: CatalogEntry | None,
    digest: Digest | None,
    strict: bool,
    options: FetchOptions,
) -> ResolvedModel:
    start = time.monotonic()
    previous_active = entry if entry is not None and entry.lifecycle is Lifecycle.ACTIVE else None
    request = PlanRequest(
        pinned_sha256=digest.hex if digest is not None and digest.algo == "sha256" and strict else None,
        include=options.include,
        exclude=options.exclude,
        refresh=options.refresh,
        previous_metadata=previous_active.metadata if previous_active else None,
        signatures=ws.signature_mode(ref.id)[0] != "off",
    )
    try:
        # the entry records what the caller pinned; the bytes are checked against ``enforced``: the same pin, or,
        # when the caller gave none, the digest a team mirror's copy was pushed with
        plan, enforced, enforced_strict = _plan(ws, ref, digest, strict, request, options.planned)
        base = ws.ledger.pending(ref, before=entry, path="", digest=digest, strict=strict)
        try:
            with fetch_slot(ws.store.locks_dir, ws.settings.max_parallel_fetches, ws.settings.lock_timeout_s):
                failpoints.failpoint("fetch.slot")
                fetched = _fetch_all(ws, ref, plan, options.progress)
            failpoints.failpoint("remote.fetched")
            _check_git_ids(ws, ref, plan, fetched)
            materialised = _materialise(ws, ref, plan, fetched)
            laid = lay_out(ws, ref, plan, materialised, enforced, enforced_strict)
            enforce = ws.signature_mode(ref.id)[0] == "enforce"
            signed = ws.checked_signature(
                ref.id, lambda: check_signature(ws, ref, laid, plan.signatures, materialised, enforce=enforce)
            )
            if signed is not None:
                laid.extra["signature"] = signed
            if signed is not None and plan.signatures:  # carried along by export (docs/fleet.md)
                laid.extra["signature_bundles"] = [base64.b64encode(b).decode() for b in plan.signatures]
        except NotModified:
            assert previous_active is not None
            now = now_ms()
            ws.catalog.put(replace(previous_active, last_verified_ms=now, last_used_ms=now))
            log.info("%s: not modified at the source; kept the cached copy", ref.id)
            cached = resolved_from(previous_active, from_cache=True)
            return replace(cached, origin="not modified at the source (HTTP 304)")
        except ProvisionerError as exc:
            if previous_active is not None and options.refresh:
                ws.catalog.put(previous_active)  # a failed refresh never loses a good copy
                raise
            if entry is None and never_reached(exc):
                ws.catalog.delete(base.id)  # a typo'd or unreachable source leaves no row (docs/cache-and-lifecycle.md)
                raise
            ws.ledger.fail(base, Check.failed(exc))
            raise
    finally:
        for closer in request.closers:
            closer.close()
    bytes_fetched = sum(o.bytes_fetched for o in fetched.values())
    for message in laid.check.warnings:
        log.warning(message)
    failpoints.failpoint("ensure.before_commit")
    active = replace(
        base,
        local_path=str(laid.local_path),
        digest=laid.digest,
        size_bytes=laid.size_bytes,
        format=laid.fmt.format,
        last_verified_ms=now_ms(),
        fingerprint=fingerprint_of(laid.local_path.stat()),
        metadata=_metadata(ref, plan, laid, options, next(iter(fetched.values()))),
        blob=laid.blob,
    )
    active = ws.ledger.commit(active, laid.check, bytes_fetched, laid.files, replaces=entry)
    log.info(
        "%s: %s in %d ms (%d bytes fetched)",
        ref.id,
        laid.check.reason,
        (time.monotonic() - start) * 1000,
        bytes_fetched,
    )
    origin = None
    if plan.metadata.get("mirror"):
        origin = f"from mirror {plan.metadata['mirror']}"
    elif plan.metadata.get("bundle"):
        origin = f"from bundle {plan.metadata['bundle']}"
    elif options.refresh and previous_active is not None:
        origin = "unchanged at the source" if previous_active.digest == laid.digest else "changed at the source"
    return replace(resolved_from(active, from_cache=False), bytes_fetched=bytes_fetched, origin=origin)


def _plan(
    ws: Workspace,
    ref: RemoteRef,
    digest: Digest | None,
    strict: bool,
    request: PlanRequest,
    planned: FetchPlan | None = None,
) -> tuple[FetchPlan, Digest | None, bool]:
    """The plan from a team mirror or a bundle being imported (``planned``): its copy must be the bytes the
    origin was verified to have when it was pushed or exported (that digest is enforced when the caller pinned
    none); else from the origin. Returns it with the digest to enforce and whether it is strict."""
    enforced, enforced_strict = digest, strict
    plan = planned
    if plan is None and not request.refresh:
        plan = plan_from_mirrors(ws.settings, ref, request.closers, signatures=request.signatures)
    if plan is None:
        plan = plan_origin(ref, ws.settings, request)
    else:
        mirrored = Digest.parse(plan.annotations[ANN_DIGEST])
        consequence = f"the {'bundle' if planned else 'mirror'} holds another version; nothing was downloaded"
        if mismatch := strict_mismatch(ref.id, digest, str(mirrored), strict=strict, consequence=consequence):
            raise mismatch
        if digest is None:
            enforced, enforced_strict = mirrored, True
    return _check_user_digest_against_source(ref, plan, enforced, enforced_strict), enforced, enforced_strict


def _metadata(
    ref: RemoteRef, plan: FetchPlan, laid: LaidOut, options: FetchOptions, first: TransferOutcome
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        **laid.fmt.metadata,
        **plan.metadata,
        **laid.extra,
        "format": laid.fmt.format,
        "layout": laid.extra.get("layout", plan.layout),
        "source": plan.metadata.get("source")
        or (redact_url(plan.files[0].sources[-1].url) if plan.layout == "file" else ref.id),
        "include": list(options.include),
        "exclude": list(options.exclude),
    }
    if plan.revision:
        metadata.setdefault("revision", plan.revision)
    if isinstance(ref, UrlRef):  # validators for a conditional --refresh (other schemes pin digests)
        if first.etag:
            metadata["etag"] = first.etag
        if first.last_modified:
            metadata["last_modified"] = first.last_modified
    return metadata


def _check_user_digest_against_source(
    ref: RemoteRef, plan: FetchPlan, digest: Digest | None, strict: bool
) -> FetchPlan:
    """A pinned digest that contradicts the source's own digest fails before a byte is downloaded."""
    if digest is None or digest.algo != "sha256" or plan.layout != "file" or len(plan.files) != 1:
        return plan
    file = plan.files[0]
    published = f"sha256:{file.sha256}" if file.sha256 is not None else None
    consequence = "the source publishes a different digest, so nothing was downloaded; check the digest or the revision"
    if mismatch := strict_mismatch(ref.id, digest, published, strict=strict, consequence=consequence):
        raise mismatch
    if file.sha256 is None and strict:
        return replace(plan, files=(replace(file, sha256=digest.hex),))
    return plan


def _is_weight(path: str) -> bool:
    return path.endswith((".safetensors", ".gguf", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".plan"))


def _fetch_all(
    ws: Workspace, ref: RemoteRef, plan: FetchPlan, progress: ProgressCallback | None
) -> dict[str, TransferOutcome]:
    aggregate = _Aggregate(plan.total_size, len(plan.files), progress)

    def one(file: RemoteFile) -> TransferOutcome:
        name = ref.id if plan.layout == "file" else f"{ref.id} [{file.path}]"
        if file.unpack and file.sha256 and not plan.conditional and ws.store.layers.members(file.sha256):
            # an archive layer already unpacked for another model: its files are in the store, verified
            blob = ws.store.blob_path(file.sha256)
            return TransferOutcome(file.sha256, file.size or 0, blob, 0, source="unpacked layer")
        if ws.settings.adopt_caches and file.sha256 and not ws.store.has_blob(file.sha256):
            _adopt_from_other_caches(ws, file.sha256, name)
        spec = TransferSpec(
            file.sources, name=name, expected_size=file.size, expected_sha256=file.sha256, conditional=plan.conditional
        )
        return ws.engine.fetch(spec, aggregate.for_file(file.path))

    small = [f for f in plan.files if not (_is_weight(f.path) or f.unpack)]
    large = [f for f in plan.files if _is_weight(f.path) or f.unpack]
    results: dict[str, TransferOutcome] = {}
    try:
        # on Ctrl-C the transfers are cancelled before each pool waits for its workers (partials are kept)
        with ThreadPoolExecutor(max_workers=4) as pool, _cancel_on_interrupt(ws):
            for file, outcome in zip(small, pool.map(one, small), strict=True):
                results[file.path] = outcome
            if INDEX in results:
                shards = shards_from_index(results[INDEX].blob.read_bytes(), f"{ref.id} [{INDEX}]")
                check_complete(shards, [f.path for f in plan.files], plan.available, ref.id)
            # weights one or two at a time: each large file already uses parallel ranges
            with ThreadPoolExecutor(max_workers=2) as big_pool, _cancel_on_interrupt(ws):
                for file, outcome in zip(large, big_pool.map(one, large), strict=True):
                    results[file.path] = outcome
    except (KeyboardInterrupt, SystemExit):
        ws.engine.resume_after_cancel()  # the pools are done: later transfers in this process may run
        raise
    return results


@contextlib.contextmanager
def _cancel_on_interrupt(ws: Workspace) -> Iterator[None]:
    """Entered after a thread pool, so it exits first: cancel the transfers, then the pool waits for them."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        ws.engine.cancel()
        raise


def _adopt_from_other_caches(ws: Workspace, sha_hex: str, name: str) -> None:
    candidate = find_adoptable(sha_hex)
    if candidate is None:
        return
    try:
        ws.store.import_file(candidate, Digest.sha256(sha_hex), name, link=True)
        log.info("%s: adopted sha256:%s from %s instead of downloading it", name, sha_hex, candidate)
    except ProvisionerError as exc:
        log.warning("%s: %s in another cache does not verify (%s); downloading", name, candidate, exc)


def _check_git_ids(ws: Workspace, ref: RemoteRef, plan: FetchPlan, fetched: dict[str, TransferOutcome]) -> None:
    for file in plan.files:
        if file.git_sha1 is None:
            continue
        outcome = fetched[file.path]
        actual = git_blob_sha1(outcome.blob)
        if actual != file.git_sha1:
            ws.ledger.drop_unreferenced([outcome.sha256])
            raise VerificationFailed(
                f"{ref.id} [{file.path}]: git blob id mismatch: the Hub says {file.git_sha1}, the bytes give "
                f"{actual}; deleted the download, try again",
                reason="mismatch",
            )


def _under_image_root(member: str, plan: FetchPlan, subject: str) -> str:
    """An image pushed with ``--as-image`` holds the model under ``models/`` (its manifest says so): the model's
    files are what lies there; anything outside is refused."""
    root = plan.annotations.get("org.model-provisioner.image-root")
    if not root:
        return member
    if not member.startswith(root + "/"):
        raise CorruptModel(subject, f"{member!r} lies outside the image's model directory {root}/")
    return member[len(root) + 1 :]


def _materialise(
    ws: Workspace, ref: RemoteRef, plan: FetchPlan, fetched: dict[str, TransferOutcome]
) -> list[EntryFile]:
    """The model's files as (path, blob, size): fetched files as they are, archive layers unpacked."""
    files: dict[str, EntryFile] = {}
    ratio = ws.settings.transfer.max_unpack_ratio
    for file in plan.files:
        outcome = fetched[file.path]
        if file.unpack is None:
            files[file.path] = EntryFile(file.path, outcome.sha256, outcome.size)
            continue
        where = f"{ref.id} [layer sha256:{outcome.sha256[:12]}]"
        members = ws.store.layers.members(outcome.sha256)
        if members is None:
            try:
                members = unpack_into_store(ws.store, outcome.blob, file.unpack, where, max_ratio=ratio)
            except FileNotFoundError:
                # another model sharing this layer unpacked it and dropped the archive meanwhile
                members = ws.store.layers.members(outcome.sha256)
                if members is None:
                    spec = TransferSpec(file.sources, name=where, expected_size=file.size, expected_sha256=file.sha256)
                    outcome = ws.engine.fetch(spec)
                    members = unpack_into_store(ws.store, outcome.blob, file.unpack, where, max_ratio=ratio)
            ws.store.layers.record(outcome.sha256, members)
        for member, sha_hex, size in members:
            path = _under_image_root(member, plan, ref.id)
            if path in files:
                raise CorruptModel(ref.id, f"{path!r} is in more than one layer")
            files[path] = EntryFile(path, sha_hex, size)
        if ws.store.has_blob(outcome.sha256) and ws.catalog.blob_refcount(outcome.sha256) == 0:
            ws.store.remove_blob(outcome.sha256)  # the archive itself is not part of any view
    if not files:
        raise CorruptModel(ref.id, "the source holds no files")
    check_no_file_dir_clash(list(files), ref.id)
    return list(files.values())
