"""The order of steps of one ensure (docs/architecture.md, "The flow of one ensure"):

parse -> policy -> catalog fast path -> single-flight lock -> (re-check) -> re-verify in place -> fetch slot
-> materialise (local file, local directory or remote) -> verify -> ledger commit.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import replace

from model_provisioner.core import failpoints
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import OfflineError, ReadOnlyCache, UnsupportedScheme, VerificationFailed
from model_provisioner.core.refs import FileRef, HfRef, ModelRef, OciRef, S3Ref, UrlRef
from model_provisioner.core.units import now_ms
from model_provisioner.obs.metrics import METRICS
from model_provisioner.pipeline.context import FetchOptions, Workspace
from model_provisioner.pipeline.localfile import provision_local
from model_provisioner.storage.catalog import CatalogEntry
from model_provisioner.storage.locks import model_lock, store_in_use
from model_provisioner.storage.views import view_source_name
from model_provisioner.verify.compare import still_answers
from model_provisioner.verify.rehash import fingerprint_of, rehash_entry, unchanged_since_verified
from model_provisioner.verify.results import ResolvedModel, resolved_from
from model_provisioner.verify.signatures import check_signature_setup, verify_bundles

log = logging.getLogger("model_provisioner")


def ensure(
    ws: Workspace, model_ref: ModelRef, digest: Digest | None, strict: bool, options: FetchOptions
) -> ResolvedModel:
    """Make ``model_ref`` present and verified; the catalog answers when it can."""
    ws.settings.policy.check_ref(model_ref)  # before any lock, file or socket
    if ws.signature_mode(model_ref.id)[0] != "off":
        check_signature_setup(ws.settings)  # a missing key or extra is exit 2, before any state changes
    entry = ws.catalog.get(model_ref.id)
    answer = warm(ws, entry, digest, strict, options)
    if answer is not None:
        return answer
    if ws.read_only:
        answer = reverify_in_place(ws, entry, digest, strict, options)
        if answer is not None:
            return answer
        state = f"its entry is {entry.lifecycle}" if entry is not None else "it is not in it"
        raise ReadOnlyCache(
            f"{model_ref.id}: the cache at {ws.store.root} is read-only and cannot provide it ({state}); "
            "provision it into a writable cache (--cache-dir) or into the image that holds this cache"
        )
    with model_lock(ws.store.locks_dir, model_ref.id, ws.settings.lock_timeout_s):
        failpoints.failpoint("ensure.locked")
        entry = ws.catalog.get(model_ref.id)  # the holder before us may have done the work
        answer = warm(ws, entry, digest, strict, options, locked=True)
        if answer is not None:
            return answer
        answer = reverify_in_place(ws, entry, digest, strict, options)
        if answer is not None:
            return answer
        answer = resign_from_stored(ws, entry, digest, strict, options)
        if answer is not None:
            return answer
        with store_in_use(ws.store.locks_dir, ws.settings.lock_timeout_s), METRICS.fetching():
            try:
                return materialise(ws, model_ref, entry, digest, strict, options)
            except (KeyboardInterrupt, SystemExit):
                ws.ledger.interrupted(model_ref.id, entry)
                raise


def warm(
    ws: Workspace,
    entry: CatalogEntry | None,
    digest: Digest | None,
    strict: bool,
    options: FetchOptions | None = None,
    *,
    locked: bool = False,
) -> ResolvedModel | None:
    """The entry still answers the request + its fingerprint is unchanged -> answer now, with one stat."""
    if entry is None:
        return None
    if options is not None and options.refresh and entry.scheme != "file":
        if not ws.settings.offline:
            return None
        log.warning("%s: offline mode is on; serving the cached copy without --refresh", entry.id)
    include, exclude = (options.include, options.exclude) if options is not None else ((), ())
    if not still_answers(
        entry, digest, strict, include=include, exclude=exclude, signature=ws.signature_required(entry.id)
    ):
        return None
    if "local_tree" in entry.metadata:
        return None  # a local directory: its tree fingerprint is checked by the directory flow
    if not unchanged_since_verified(entry):
        return None
    if digest is not None and entry.expected_digest != str(digest) and not ws.read_only:
        # the bytes are the ones verified, and a digest is given for the first time: it becomes the pin
        # (README: a digest that verified once keeps applying to that id); written under the model lock
        if not locked:
            return None
        entry = ws.ledger.record_pin(entry, digest, strict)
    _check_caller_access(ws, entry)  # a private repo's bytes go only to callers its source accepts
    now = now_ms()
    if now - max(entry.last_used_ms, ws.touched.get(entry.id, 0)) >= ws.settings.touch_interval_ms and not ws.read_only:
        ws.catalog.touch(entry.id, now)
        ws.touched[entry.id] = now
    return resolved_from(entry, from_cache=True)


def _check_caller_access(ws: Workspace, entry: CatalogEntry) -> None:
    """Public entries (nearly all) cost one dictionary look-up: the module is loaded for restricted ones only."""
    if entry.metadata.get("access") == "restricted":
        from model_provisioner.pipeline.access import check_caller_access  # noqa: PLC0415  # heavy: the access check and its sources, only for restricted entries

        check_caller_access(ws, entry)


def reverify_in_place(
    ws: Workspace, entry: CatalogEntry | None, digest: Digest | None, strict: bool, options: FetchOptions
) -> ResolvedModel | None:
    """An Active remote entry whose files changed identity (the cache was copied or restored from a
    backup: new inodes) is re-hashed locally before anything is fetched again; same bytes -> served. A
    read-only cache cannot record the new fingerprints: there the files are re-hashed in memory, once per
    process and file identity (docs/reliability.md, "Read-only and shared caches")."""
    if entry is None or entry.scheme == "file" or entry.verification == "mismatch_advisory":
        return None
    if options.refresh and not ws.read_only:  # a read-only cache fetches nothing: what it holds is its answer
        return None
    signature = ws.signature_required(entry.id)
    if not still_answers(entry, digest, strict, include=options.include, exclude=options.exclude, signature=signature):
        return None
    try:
        identity = fingerprint_of(os.stat(entry.local_path))
    except OSError:
        return None
    if identity == entry.fingerprint:
        return None  # not a changed identity: the warm path declined for another reason
    if ws.read_only:
        return _rehashed_in_memory(ws, entry, identity)
    report = ws.ledger.apply(entry, rehash_entry(entry, ws.catalog.files(entry.id), None), repairing=True)
    if not report.ok:
        return None  # marked Failed (and a corrupt blob quarantined): the caller fetches it again
    _check_caller_access(ws, entry)
    ws.ledger.relink_views(entry)
    refreshed = ws.catalog.get(entry.id)
    log.info("%s: files were replaced by identical bytes (copied cache?); re-verified in place", entry.id)
    return resolved_from(refreshed, from_cache=True) if refreshed is not None else None


def resign_from_stored(
    ws: Workspace, entry: CatalogEntry | None, digest: Digest | None, strict: bool, options: FetchOptions
) -> ResolvedModel | None:
    """An Active entry that answers everything but the signature the policy now asks for (another key set) is
    checked again against the signatures it was pulled or imported with, kept on the entry: no source needed,
    so an air-gapped machine follows a change of keys (docs/fleet.md, "Air-gapped bundles")."""
    bundles = entry.metadata.get("signature_bundles") if entry is not None else None
    if entry is None or not bundles or not isinstance(bundles, list) or ws.read_only or entry.scheme == "file":
        return None
    required = ws.signature_required(entry.id)
    if required is None or not still_answers(entry, digest, strict, include=options.include, exclude=options.exclude):
        return None
    if not unchanged_since_verified(entry):
        return None
    files = [(f.path, ws.store.blob_path(f.blob)) for f in ws.catalog.files(entry.id)]
    if not files and entry.blob:  # one file: its name as pulled (a view's name may carry @<digest>)
        files = [(view_source_name(entry.local_path), ws.store.blob_path(entry.blob))]
    decoded = [base64.b64decode(b) for b in bundles if isinstance(b, str)]
    model_id = entry.id
    try:
        label = ws.checked_signature(
            model_id, lambda: verify_bundles(ws.settings, files, ws.store.partial_dir, decoded, model_id)
        )
    except VerificationFailed:
        if ws.settings.offline:
            raise
        return None  # the source may have a signature by the new keys: the pull checks it
    current = ws.catalog.get(model_id)
    if current is None:
        return None
    entry = replace(current, metadata={**current.metadata, "signature": label})
    ws.catalog.put(entry)
    log.info("%s: checked again against its stored signatures under the key set in force", entry.id)
    return resolved_from(entry, from_cache=True)


def _rehashed_in_memory(ws: Workspace, entry: CatalogEntry, identity: tuple[int, ...]) -> ResolvedModel | None:
    key = (entry.id, identity)
    if key not in ws.rehashed:
        rehash = rehash_entry(entry, ws.catalog.files(entry.id), None)
        if not rehash.ok:
            log.warning("%s: %s (read-only cache: not served)", entry.id, rehash.message)
            return None
        ws.rehashed.add(key)
        log.info("%s: re-hashed in memory (a copied read-only cache cannot record it)", entry.id)
    _check_caller_access(ws, entry)
    return resolved_from(entry, from_cache=True)


def materialise(
    ws: Workspace,
    ref: ModelRef,
    entry: CatalogEntry | None,
    digest: Digest | None,
    strict: bool,
    options: FetchOptions,
) -> ResolvedModel:
    """Bring the bytes here by the scheme's flow (the model lock is held)."""
    if ws.schemes is not None and ref.scheme not in ws.schemes:
        raise UnsupportedScheme(f"{ref.id}: this provisioner was created for {', '.join(sorted(ws.schemes))} refs only")
    if isinstance(ref, FileRef):
        return provision_local(ws, ref, entry, digest, strict)
    if isinstance(ref, HfRef | UrlRef | S3Ref | OciRef):
        if ws.settings.offline and options.planned is None:  # a bundle's plan needs no network
            state = f"its catalog entry is {entry.lifecycle}" if entry is not None else "it is not in the cache"
            raise OfflineError(
                f"{ref.id} is not available offline ({state}); run it once without --offline "
                "(and with MODEL_PROVISIONER_OFFLINE / HF_HUB_OFFLINE unset)"
            )
        from model_provisioner.pipeline.remote import provision_remote  # noqa: PLC0415  # heavy: the remote flow (sources, transfer, net: ~15 ms of start-up) that a warm or local ensure never needs

        return provision_remote(ws, ref, entry, digest, strict, options)
    raise UnsupportedScheme(f"{ref.id}: no fetcher for scheme {ref.scheme!r}")
