"""Cache lifecycle: gc, LRU eviction under a size budget, leases and pins, dedup-aware accounting, and
adopting blobs that huggingface_hub or Ollama already downloaded.

Accounting is by blob: a blob shared by several ids (the same LFS file in two repos, a GGUF registered under
two refs) is counted once, and it is freed only when the last entry using it goes. Files registered in place
(``file:``) are the user's, not the cache's: they count for nothing and are never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import Lease, Lifecycle, now_ms
from .errors import InvalidInput, NotFound, PolicyDenied
from .locks import lock_is_free, model_lock_is_free, store_exclusive
from .refs import parse

if TYPE_CHECKING:
    from .provisioner import ModelProvisioner

log = logging.getLogger("model_provisioner")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_HEX64 = re.compile(r"[0-9a-f]{64}")
VIEW_ROOTS = ("gguf", "files", "transformers", "triton")


class LeaseHeld(PolicyDenied):
    code = "leased"


def parse_size(text: str) -> int:
    """``1GB`` = 10^9, ``1GiB`` = 2^30, ``500M`` = 500*10^6, ``123`` = bytes."""
    m = _SIZE_RE.match(str(text))
    if m is None:
        raise InvalidInput(f"invalid size {text!r}; use e.g. 500MB, 1.5GiB, 20G")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    power = " kmgtp".index(unit) if unit else 0
    return int(number * ((1024 if binary else 1000) ** power))


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w``: the unit is required (is ``5`` five seconds or five days?)."""
    m = _DURATION_RE.match(str(text))
    if m is None:
        raise InvalidInput(f"invalid duration {text!r}: give a number with a unit, e.g. 45s, 30m, 12h, 7d, 2w")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2).lower()]


# ============================================================================================ leases
def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat): tells a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def lease_is_live(lease: Lease, now: int | None = None) -> bool:
    now = now if now is not None else now_ms()
    if lease.expires_ms is not None and lease.expires_ms <= now:
        return False
    if lease.pid is not None and lease.host == socket.gethostname():
        return _proc_start(lease.pid) == lease.pid_start
    return True


def acquire_lease(
    prov: ModelProvisioner, ref: Any, *, holder: str | None = None, pid: int | None = None, ttl_s: float | None = None
) -> Lease:
    model_id = parse(ref).id
    entry = prov.catalog.get(model_id)
    if entry is None or entry.lifecycle is not Lifecycle.ACTIVE:
        raise NotFound(f"{model_id} is not an Active model here; ensure it before leasing it")
    pid = pid if pid is not None else (os.getpid() if ttl_s is None else None)
    start = _proc_start(pid) if pid is not None else None
    if pid is not None and start is None:
        raise InvalidInput(f"process {pid} does not exist; a lease needs a live process (--pid) or a --ttl")
    now = now_ms()
    lease = Lease(
        lease_id=uuid.uuid4().hex[:16],
        model_id=model_id,
        holder=holder or f"pid {pid}",
        host=socket.gethostname(),
        created_ms=now,
        pid=pid,
        pid_start=start,
        expires_ms=now + int(ttl_s * 1000) if ttl_s else None,
    )
    prov.catalog.add_lease(lease)
    return lease


def live_leases(prov: ModelProvisioner, model_id: str | None = None) -> list[Lease]:
    """Live leases; leases of dead processes and expired ones are dropped on the way."""
    now = now_ms()
    live = []
    for lease in prov.catalog.leases(model_id):
        if lease_is_live(lease, now):
            live.append(lease)
        else:
            prov.catalog.remove_lease(lease.lease_id)
            log.info("lease %s on %s expired (holder %s gone)", lease.lease_id, lease.model_id, lease.holder)
    return live


@contextmanager
def leased(prov: ModelProvisioner, ref: Any, holder: str | None = None) -> Iterator[Lease]:
    lease = acquire_lease(prov, ref, holder=holder)
    try:
        yield lease
    finally:
        prov.catalog.remove_lease(lease.lease_id)


def check_removable(prov: ModelProvisioner, model_id: str, pinned: bool, force: bool) -> None:
    if force:
        return
    if pinned:
        raise LeaseHeld(f"{model_id} is pinned; unpin it first (model-provisioner unpin {model_id}) or use --force")
    holders = live_leases(prov, model_id)
    if holders:
        who = "; ".join(f"{h.holder} ({describe_lease(h)}, lease {h.lease_id})" for h in holders)
        ids = " ".join(h.lease_id for h in holders)
        raise LeaseHeld(
            f"{model_id} is in use: leased by {who}; release it (model-provisioner release {ids}) or use --force"
        )


def describe_lease(lease: Lease, now: int | None = None) -> str:
    """``pid 4242 on host``, ``expires in 59m``: only what the lease has (never a Python ``None``)."""
    now = now if now is not None else now_ms()
    parts: list[str] = []
    if lease.pid is not None:
        parts.append(f"pid {lease.pid} on {lease.host}")
    if lease.expires_ms is not None:
        left = max(0, (lease.expires_ms - now) // 1000)
        parts.append(f"expires in {_duration_text(left)}")
    return ", ".join(parts) or "until released"


def lease_json(lease: Lease) -> dict[str, Any]:
    return {
        "lease_id": lease.lease_id,
        "model_id": lease.model_id,
        "holder": lease.holder,
        "host": lease.host,
        "pid": lease.pid,
        "created_ms": lease.created_ms,
        "expires_ms": lease.expires_ms,
    }


def _duration_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ======================================================================================= accounting
@dataclass
class Usage:
    logical_bytes: int  # sum of entry sizes (what ``ls`` lists)
    disk_bytes: int  # unique blobs, each counted once (what the cache really uses)
    entries: int
    blob_owners: dict[str, set[str]]
    blob_sizes: dict[str, int]


def usage(prov: ModelProvisioner, rows: list[tuple[Any, ...]] | None = None) -> Usage:
    rows = rows if rows is not None else prov.catalog.rows_for_listing()
    sets = prov.catalog.blob_sizes_by_entry()
    owners: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    logical = 0
    for row in rows:
        model_id, size, blob = row[0], row[2], row[8]
        logical += size
        if blob:
            owners.setdefault(blob, set()).add(model_id)
            sizes[blob] = size
        for set_blob in sets.get(model_id, ()):
            owners.setdefault(set_blob, set()).add(model_id)
    missing = [b for b in owners if b not in sizes]
    for blob in missing:
        try:
            sizes[blob] = prov.store.blob_path(blob).stat().st_size
        except OSError:
            sizes[blob] = 0
    return Usage(logical, sum(sizes.values()), len(rows), owners, sizes)


# ========================================================================================= eviction
def enforce_budget(
    prov: ModelProvisioner, max_bytes: int, *, protect: frozenset[str] = frozenset(), dry_run: bool = False
) -> list[tuple[str, int]]:
    """Evict least recently used entries until the blobs in use fit ``max_bytes``. Never a pinned entry,
    one with a live lease, one in ``protect``, a Pending one, or a file registered in place."""
    rows = prov.catalog.rows_for_listing()
    use = usage(prov, rows)
    if use.disk_bytes <= max_bytes:
        return []
    leased_ids = {lease.model_id for lease in live_leases(prov)}
    owners = {blob: set(ids) for blob, ids in use.blob_owners.items()}
    blobs_of: dict[str, list[str]] = {}
    for blob, ids in owners.items():
        for model_id in ids:
            blobs_of.setdefault(model_id, []).append(blob)
    candidates = sorted(
        (
            r
            for r in rows
            if not r[7] and r[0] not in leased_ids and r[0] not in protect and r[1] != "Pending" and r[12] != "file"
        ),
        key=lambda r: (r[6], r[0]),
    )
    disk = use.disk_bytes
    evicted: list[tuple[str, int]] = []
    for row in candidates:
        if disk <= max_bytes:
            break
        model_id = row[0]
        freed = 0
        for blob in blobs_of.get(model_id, []):
            owners[blob].discard(model_id)
            if not owners[blob]:
                freed += use.blob_sizes.get(blob, 0)
        if not dry_run:
            prov.evict(model_id, force=True)
        disk -= freed
        evicted.append((model_id, freed))
        log.info("evicted %s (least recently used; %d bytes freed)", model_id, freed)
    if disk > max_bytes:
        log.warning(
            "cache still uses %d bytes over its %d-byte budget: the rest is pinned, leased or in use",
            disk - max_bytes,
            max_bytes,
        )
    return evicted


# =============================================================================================== gc
@dataclass
class GcReport:
    dry_run: bool
    removed: list[dict[str, Any]] = field(default_factory=list)
    bytes_freed: int = 0
    waited_for_ensures: bool = False

    def add(self, kind: str, what: str, size: int) -> None:
        self.removed.append({"kind": kind, "what": what, "bytes": size})
        self.bytes_freed += size


def gc(
    prov: ModelProvisioner,
    *,
    max_bytes: int | None = None,
    dry_run: bool = False,
    grace_s: float = 3600.0,
    failed_retention_s: float = 7 * 86400.0,
    wait_s: float = 600.0,
) -> GcReport:
    """Remove what nothing uses. Holds the store lock exclusively: in-flight ensures finish first, so a blob an
    ensure is about to link is never taken."""
    report = GcReport(dry_run)
    now = now_ms()
    with store_exclusive(prov.store.locks_dir, wait_s) as waited:
        report.waited_for_ensures = waited
        # 1. Failed entries past their retention (their store files go with them)
        for row in prov.catalog.rows_for_listing():
            expired = row[1] == "Failed" and now - max(row[6], row[11]) > failed_retention_s * 1000
            # an interrupted ensure holds nothing (its partial download is kept below, within the grace
            # period); a Pending row nobody is provisioning is what a SIGKILL left
            interrupted = (row[1] == "Failed" and row[4] == "interrupted") or (
                row[1] == "Pending" and model_lock_is_free(prov.store.locks_dir, row[0])
            )
            if expired or interrupted:
                report.add("interrupted-entry" if interrupted and not expired else "failed-entry", row[0], 0)
                if not dry_run:
                    prov.evict(row[0], force=True)
        # 2. budget
        if max_bytes is not None:
            for model_id, freed in enforce_budget(prov, max_bytes, dry_run=dry_run):
                report.add("lru-evicted", model_id, freed)
        # 3. blobs no entry references
        referenced = prov.catalog.referenced_blobs()
        if prov.store.blobs_dir.is_dir():
            for blob in os.scandir(prov.store.blobs_dir):
                if blob.name not in referenced and _HEX64.fullmatch(blob.name):
                    size = blob.stat().st_size
                    report.add("blob", blob.name, size)
                    if not dry_run:
                        prov.store.remove_blob(blob.name)
        prov.store.fingerprints.prune(prov.store.has_blob, dry_run)
        # 3b. the record of an unpacked layer whose files went with step 3: the layer is fetched again if needed
        for layer in prov.store.prune_unpacked(dry_run):
            report.add("layer-record", layer, 0)
        # 4. views nothing points at (and leftovers of interrupted view builds)
        _gc_views(prov, report, dry_run)
        # 5. partial downloads older than the grace period whose lock is free
        _gc_partials(prov, report, dry_run, grace_s)
    return report


def _gc_views(prov: ModelProvisioner, report: GcReport, dry_run: bool) -> None:
    keep_files: set[str] = set()
    keep_dirs: set[str] = set()
    for row in prov.catalog.rows_for_listing():
        if row[5]:
            keep_files.add(row[5])
        if row[9] and '"view_dir"' in row[9]:
            view_dir = json.loads(row[9]).get("view_dir")
            if view_dir:
                keep_dirs.add(view_dir)
    for top in VIEW_ROOTS:
        root = prov.store.root / top
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, topdown=True):
            if dirpath in keep_dirs:
                dirnames[:] = []  # a kept tree is kept whole
                continue
            for name in list(dirnames):
                full = os.path.join(dirpath, name)
                if (name.startswith(".") and name.endswith((".tmp", ".old"))) and full not in keep_dirs:
                    report.add("view-leftover", full, 0)
                    if not dry_run:
                        import shutil

                        shutil.rmtree(full, ignore_errors=True)
                    dirnames.remove(name)
            for name in filenames:
                full = os.path.join(dirpath, name)
                if full not in keep_files:
                    report.add("view", full, 0)  # a hard link: its bytes are counted with its blob
                    if not dry_run:
                        os.unlink(full)
        if not dry_run:
            for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
                if dirpath != str(root):
                    with suppress(OSError):
                        os.rmdir(dirpath)


def _gc_partials(prov: ModelProvisioner, report: GcReport, dry_run: bool, grace_s: float) -> None:
    partial_dir = prov.store.partial_dir
    if not partial_dir.is_dir():
        return
    cutoff = time.time() - grace_s
    for item in os.scandir(partial_dir):
        st = item.stat()
        if st.st_mtime > cutoff:
            continue  # young: may still be resumed
        key = item.name.split(".", 1)[0]
        if _HEX64.fullmatch(key) and not lock_is_free(prov.store.locks_dir / f"blob-{key[:32]}.lock"):
            continue  # a download holds it right now
        report.add("partial", item.name, st.st_size)
        if not dry_run:
            os.unlink(item.path)


# ========================================================================================= adoption
@dataclass
class ImportReport:
    adopted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def default_hf_cache() -> Path:
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env)
    hf_home = os.environ.get("HF_HOME")
    return Path(hf_home) / "hub" if hf_home else Path.home() / ".cache" / "huggingface" / "hub"


def default_ollama_models() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env) if env else Path.home() / ".ollama" / "models"


def import_hf_cache(prov: ModelProvisioner, hub_cache: Path, report: ImportReport) -> None:
    """huggingface_hub's cache: ``models--ORG--NAME/snapshots/<commit>/<path>`` -> ``blobs/<etag>``. LFS
    blobs (etag = sha256) are hashed, linked into our store and registered as ``hf:ORG/NAME@<commit>/<path>``."""
    for repo_dir in sorted(hub_cache.glob("models--*--*")):
        repo_id = "/".join(repo_dir.name.split("--", 2)[1:])
        for snapshot in sorted((repo_dir / "snapshots").glob("*")):
            for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
                target = path.resolve()
                etag = target.name
                rel = path.relative_to(snapshot).as_posix()
                ref = f"hf:{repo_id}@{snapshot.name}/{rel}"
                if not _HEX64.fullmatch(etag):
                    report.skipped.append({"ref": ref, "why": "not an LFS file (no sha256 to verify against)"})
                    continue
                _adopt(prov, ref, target, etag, report)


def import_ollama(prov: ModelProvisioner, models_dir: Path, report: ImportReport) -> None:
    """Ollama: ``manifests/<registry>/<namespace>/<name>/<tag>`` lists layers; the model layer
    (``application/vnd.ollama.image.model``, a GGUF) is ``blobs/sha256-<hex>``. Registered as
    ``oci://<registry>/<namespace>/<name>:<tag>``."""
    manifests = models_dir / "manifests"
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = manifest.relative_to(manifests).parts
        if len(parts) < 3:
            continue
        registry, *repo, tag = parts
        try:
            layers = json.loads(manifest.read_text()).get("layers", [])
        except (OSError, ValueError):
            report.skipped.append({"ref": str(manifest), "why": "unreadable manifest"})
            continue
        for layer in layers:
            if layer.get("mediaType") != "application/vnd.ollama.image.model":
                continue
            digest = str(layer.get("digest", ""))
            hex_ = digest.split(":", 1)[-1]
            blob = models_dir / "blobs" / f"sha256-{hex_}"
            ref = f"oci://{registry}/{'/'.join(repo)}:{tag}"
            if not _HEX64.fullmatch(hex_) or not blob.is_file():
                report.skipped.append({"ref": ref, "why": f"model layer {digest!r} missing"})
                continue
            _adopt(prov, ref, blob, hex_, report)


def _adopt(prov: ModelProvisioner, ref: str, source: Path, sha_hex: str, report: ImportReport) -> None:
    from .errors import ProvisionerError

    try:
        existing = prov.locate(ref)
        if existing is not None and existing.digest == f"sha256:{sha_hex}":
            report.skipped.append({"ref": ref, "why": "already provisioned"})
            return
        resolved = prov.register_model(ref, source, f"sha256:{sha_hex}", link=True)
    except ProvisionerError as exc:
        report.skipped.append({"ref": ref, "why": str(exc)})
        return
    report.adopted.append(
        {
            "ref": resolved.id,
            "digest": resolved.digest,
            "size_bytes": resolved.size_bytes,
            "local_path": str(resolved.local_path),
        }
    )


def find_adoptable(sha_hex: str) -> Path | None:
    """A blob with this sha256 already on disk in a huggingface_hub or Ollama cache (opt-in automatic step)."""
    hub = default_hf_cache()
    if hub.is_dir():
        for candidate in hub.glob(f"models--*/blobs/{sha_hex}"):
            if candidate.is_file():
                return candidate
    ollama = default_ollama_models() / "blobs" / f"sha256-{sha_hex}"
    return ollama if ollama.is_file() else None
