"""One attempt at one file from one source: resume what a partial download left, ask for the rest, take the
answer apart (304, 416, a range at the wrong offset, a size that contradicts the plan), stream it or fan out
to parallel ranges, then check size and digest and commit the blob."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from model_provisioner.core import failpoints
from model_provisioner.core.errors import DigestMismatch, NotFound, NotModified, PolicyDenied, TransferFailed
from model_provisioner.core.redact import redact_url
from model_provisioner.net.ranges import body_cap, range_end, total_and_start, unsatisfied_length
from model_provisioner.net.retry import is_retryable_status, retry_after_of
from model_provisioner.transfer.body_checks import SlowStreamWatch
from model_provisioner.transfer.parallel import ParallelDownload
from model_provisioner.transfer.partial import ChunkMap, discard, drop_maps, kept_prefix, rehash_prefix, write_meta
from model_provisioner.transfer.services import EngineServices
from model_provisioner.transfer.stream import stream_into, stream_rest
from model_provisioner.transfer.types import (
    AttemptState,
    FileDeadline,
    Hasher,
    MirrorFilling,
    Progress,
    ProgressCallback,
    Restart,
    Retryable,
    Source,
    TransferOutcome,
    TransferSpec,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("model_provisioner")


def run_attempt(
    engine: EngineServices,
    source: Source,
    spec: TransferSpec,
    partial: Path,
    progress_cb: ProgressCallback | None,
    *,
    deadline: FileDeadline | None,
    wait_for_fill: bool = False,
) -> TransferOutcome:
    """Ask (``_first_request``), take the answer apart (``_without_body``, ``_placed``), receive, commit."""
    import httpx  # noqa: PLC0415  # heavy: only network transfers get here

    meta_path = partial.with_suffix(".json")
    kept, etag_kept, chunks = kept_prefix(partial, meta_path, spec, source)
    headers, open_ended = _first_request(engine, source, spec, kept, etag_kept, chunks)
    try:
        response, final_url, final_headers = engine.open(source, headers)
    except httpx.HTTPError as exc:
        raise Retryable.of(exc) from None
    try:
        done = _without_body(engine, source, spec, partial, response, kept, etag_kept, deadline, wait_for_fill)
        if done is not None:
            return done
        raise_for_status(response, spec)
        total, kept, chunks = _placed(engine, source, spec, partial, response, kept, chunks)
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        if chunks is not None and (total is None or chunks[-1].end != total or (etag_kept and etag != etag_kept)):
            raise Restart("the resource changed since the interrupted download")
        if chunks is None:
            write_meta(meta_path, spec, source, etag, parallel=False, prefix=kept)
        progress = Progress(total, progress_cb)
        hasher = rehash_prefix(partial, kept)
        if kept:
            progress.add(kept, fetched=False)
        att = AttemptState(spec, source, partial, meta_path, final_url, final_headers, etag, hasher, progress, deadline)
        _receive(engine, att, response, kept, total, chunks, open_ended)
    finally:
        response.close()
    return commit(
        engine,
        spec,
        source,
        partial,
        hasher,
        total,
        etag,
        last_modified,
        deadline=deadline,
        fetched=progress.fetched,
        resumed_from=kept,
    )


def _first_request(
    engine: EngineServices,
    source: Source,
    spec: TransferSpec,
    kept: int,
    etag_kept: str | None,
    chunks: ChunkMap | None,
) -> tuple[dict[str, str], bool]:
    """(the first request's headers, whether it asks for the whole rest). The first request is a bounded range
    (exactly the first chunk of a parallel download), so that no byte a server pushes is ever thrown away; a
    server without ranges answers 200 with everything."""
    headers = dict(spec.conditional)
    first_end = kept + engine.settings.parallel_chunk_min_bytes
    if chunks is not None:
        # the range the kept prefix stops in (a complete range ending at ``kept`` is not it: it would ask for
        # ``bytes=kept-(kept-1)``, which a server answers 416, and the download would start over)
        first_end = next((c.end for c in chunks if not c.complete and c.reached == kept), first_end)
    open_ended = not source.bounded_first and chunks is None
    if not open_ended:
        headers["Range"] = f"bytes={kept}-{first_end - 1}"
    elif kept:
        headers["Range"] = f"bytes={kept}-"
    if kept and etag_kept and not etag_kept.startswith("W/"):
        headers["If-Range"] = etag_kept
    return headers, open_ended


def _without_body(
    engine: EngineServices,
    source: Source,
    spec: TransferSpec,
    partial: Path,
    response: httpx.Response,
    kept: int,
    etag_kept: str | None,
    deadline: FileDeadline | None,
    wait_for_fill: bool,
) -> TransferOutcome | None:
    """The answers that end the attempt before any body: 304, an empty resource, a partial already complete
    (416 naming its length), a mirror still filling. None: a body follows."""
    status = response.status_code
    if status == 304 and spec.conditional:
        raise NotModified(f"{spec.name}: not modified")
    if status == 416 and kept == 0 and response.headers.get("Content-Range", "").endswith("/0"):
        return engine.empty(spec)  # an empty resource: no byte range can be satisfied
    if status == 416 and kept and unsatisfied_length(response.headers) == kept:
        # the partial already holds every byte (an interruption after the last range landed, or a crash before
        # the commit): verify and commit it without fetching anything again
        etag = response.headers.get("ETag") or etag_kept
        hasher = rehash_prefix(partial, kept)
        last_modified = response.headers.get("Last-Modified")
        return commit(
            engine,
            spec,
            source,
            partial,
            hasher,
            kept,
            etag,
            last_modified,
            deadline=deadline,
            fetched=0,
            resumed_from=kept,
        )
    if status == 200 and wait_for_fill and (spec.expected_size or 0) >= engine.settings.parallel_chunk_min_bytes:
        raise MirrorFilling(f"{source.label} does not hold the blob yet (it answered a Range request with 200)")
    return None


def _placed(
    engine: EngineServices,
    source: Source,
    spec: TransferSpec,
    partial: Path,
    response: httpx.Response,
    kept: int,
    chunks: ChunkMap | None,
) -> tuple[int | None, int, ChunkMap | None]:
    """Where the body lands: (the total length if known, the offset it starts at, the chunk map still valid).
    A 206 elsewhere than asked (or contradicting itself) starts over from zero; a 200 to a Range request
    restarts the partial; a size other than the one expected is refused; the rest must fit on the disk."""
    status = response.status_code
    total, start = total_and_start(status, response.headers)
    if start != kept:
        if status == 206:
            response.close()
            discard(partial)
            raise Retryable(
                "server answered the Range request at the wrong offset, or with a Content-Range its "
                "Content-Length contradicts; restarting"
            )
        if kept:
            log.info("%s: server ignored the Range request; starting over", spec.name)
        kept, chunks = 0, None
    if spec.expected_size is not None and total is not None and total != spec.expected_size:
        raise TransferFailed(
            f"{spec.name}: {redact_url(source.url)} serves {total} bytes but {spec.expected_size} are "
            "expected; the source changed or is wrong"
        )
    total = total if total is not None else spec.expected_size
    if total is not None:
        engine.store.check_free_space(total - kept)
    return total, kept, chunks


def _receive(
    engine: EngineServices,
    att: AttemptState,
    response: httpx.Response,
    kept: int,
    total: int | None,
    chunks: ChunkMap | None,
    open_ended: bool,
) -> None:
    """The body of the first answer, then what is left: one stream while it is fast enough, else parallel ranges
    (a per-connection cap, a long fat pipe); a resumed parallel download resumes as one. An ``open_ended`` first
    answer (the whole rest) is watched like the rest of a bounded one, and cut where it turns slow."""
    settings = engine.settings
    status = response.status_code
    accepts_ranges = status == 206 or response.headers.get("Accept-Ranges", "").lower() == "bytes"
    parallel = (
        total is not None
        and accepts_ranges
        and settings.connections > 1
        and (chunks is not None or total - kept >= settings.parallel_threshold_bytes)
    )
    if parallel and chunks is not None:  # resuming an interrupted parallel download
        assert total is not None
        ParallelDownload(engine, att, kept, total, chunks).run(response)
        return
    # never more than the range asked for or the size expected: an endless body is cut at once
    cap = body_cap(status, response.headers, kept, total)
    enough = settings.single_stream_enough_bytes_per_s
    first_watch = SlowStreamWatch(enough) if parallel and open_ended else None
    end, rate = stream_into(engine, att, response, kept, first_watch, cap=cap)
    if first_watch is not None and total is not None and end < total:
        response.close()
        slow = first_watch.last_rate or rate
        log.info("%s: one connection is slow (%.0f MB/s); fanning out the rest", att.spec.name, slow / 1e6)
        ParallelDownload(engine, att, end, total, None, single_rate=slow).run(None)
        return
    served_to = range_end(status, response.headers)
    if served_to is not None and end != served_to + 1:
        # the range's body ended early: the next offset is always the bytes actually received
        raise Retryable(f"the range answer ended after {end - kept} of its {served_to + 1 - kept} bytes")
    if served_to is None or total is None or served_to + 1 >= total:
        return
    offset = end
    # ``rate`` counts receiving time only: a slow disk is no reason to fan out
    if not parallel or rate >= enough:
        # keep watching: servers often let a first burst through at full speed
        watch = SlowStreamWatch(enough) if parallel else None
        offset = stream_rest(engine, att, offset, watch)
        if watch is not None and watch.last_rate is not None:
            rate = watch.last_rate  # what the one stream did when it turned slow: the fan-out's baseline
    if offset < total:
        log.info("%s: one connection is slow (%.0f MB/s); fanning out the rest", att.spec.name, rate / 1e6)
        ParallelDownload(engine, att, offset, total, None, single_rate=rate).run(None)


def commit(
    engine: EngineServices,
    spec: TransferSpec,
    source: Source,
    partial: Path,
    hasher: Hasher,
    total: int | None,
    etag: str | None,
    last_modified: str | None,
    *,
    deadline: FileDeadline | None,
    fetched: int,
    resumed_from: int,
) -> TransferOutcome:
    """The partial file is complete: check its size and digest, then move it into the blob store."""
    # a cancellation shuts sockets down, which ends a body without a length like a clean EOF: never
    # take that for the end of the file
    engine.check_deadline(deadline)
    failpoints.failpoint("transfer.complete")
    size = os.lstat(partial).st_size
    if total is not None and size != total:
        raise Retryable(f"connection closed after {size} of {total} bytes")
    sha_hex = hasher.hexdigest()
    if spec.expected_sha256 and sha_hex != spec.expected_sha256:
        discard(partial)
        raise DigestMismatch(
            spec.name,
            f"sha256:{spec.expected_sha256}",
            f"sha256:{sha_hex}",
            f"deleted the download from {source.label} {redact_url(source.url)}",
        )
    blob = engine.store.commit_blob(partial, sha_hex)
    drop_maps(partial)
    shown = f"{source.label} {redact_url(source.url)}"
    return TransferOutcome(sha_hex, size, blob, fetched, resumed_from, etag, last_modified, source=shown)


def raise_for_status(response: httpx.Response, spec: TransferSpec) -> None:
    status = response.status_code
    shown = redact_url(str(response.request.url))
    if status in (200, 206):
        return
    if is_retryable_status(status):
        raise Retryable(f"HTTP {status} from {shown}", retry_after_of(response.headers))
    if status in (404, 410):
        raise NotFound(f"{spec.name}: {shown} answered HTTP {status} (not found); check the reference")
    if status in (401, 403):
        raise PolicyDenied(
            f"{spec.name}: {shown} refused access (HTTP {status}); check the token or credentials for "
            f"{urlsplit(shown).hostname}"
        )
    if status == 416:
        raise Restart(f"HTTP 416 from {shown}: range not satisfiable")
    raise TransferFailed(f"{spec.name}: unexpected HTTP {status} from {shown}")
