"""Build once per team: ``engines push`` publishes an installed engine to an OCI registry, ``engines install
--from`` installs it elsewhere with no compiler (docs/engines.md, "Installing an engine").

The artifact is an OCI manifest (``artifactType`` ``application/vnd.model-provisioner.engine.v1``) with two
titled layers, the binary and ``engine.json`` (what it was built from: kind, target, binary sha256, source,
source digest, subdir, flags, version), the same facts as manifest annotations, and the empty config. On
install it is fetched like a model (every layer checked against its descriptor's digest while streaming;
registry mirrors and credentials apply), its record validated, and the binary copied into
``engines/llamacpp/<key>/`` while hashing it again: it must have the recorded sha256, or nothing is
installed. The key is the builder's (``build.key_of``), so the same build has the same id everywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import CorruptModel, InvalidInput
from model_provisioner.core.refs import OciRef, parse
from model_provisioner.engines.binaries import BinaryIdentity, built, record_binary, write_record
from model_provisioner.engines.build import engine_home, key_of, verified_copy_from
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.installed import TARGET_NAME, InstalledEngine
from model_provisioner.net.registry.client import RegistryClient
from model_provisioner.net.registry.referrers import EMPTY_CONFIG as EMPTY_BLOB
from model_provisioner.net.registry.referrers import EMPTY_DIGEST
from model_provisioner.sources.oci import ENGINE_ARTIFACT
from model_provisioner.storage.locks import FileLock
from model_provisioner.storage.safefs import open_in_cache

log = logging.getLogger("model_provisioner")

BINARY_LAYER = "application/vnd.model-provisioner.engine.binary.v1"
RECORD_LAYER = "application/vnd.model-provisioner.engine.record.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
RECORD_NAME = "engine.json"
ANN = "org.model-provisioner.engine."
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("kind", "target", "binary_sha256", "source", "source_digest", "subdir", "flags", "version")


def _oci(ref: str, what: str) -> OciRef:
    parsed = parse(ref)
    if not isinstance(parsed, OciRef):
        raise InvalidInput(
            f"{what} {ref[:200]!r} is not an oci:// ref; e.g. oci://registry.internal/team/llama-server:b1"
        )
    return parsed


def push(host: EngineHost, engine: InstalledEngine, destination: str) -> str:
    """Publish ``engine`` (checked first: its recorded bytes) to ``destination``; returns the ``oci://…@sha256:``
    ref that installs exactly it."""
    target = _oci(destination, "destination")
    identity = built(engine.home, engine.record.target)
    if identity is None or identity.sha256 != engine.record.binary_sha256:
        raise CorruptModel(str(engine.home), "the installed engine is not in the store as recorded; install it again")
    record_bytes, raw = engine_manifest(engine)
    r = engine.record
    with RegistryClient(target.registry, host.settings) as client:
        client.upload_blob(target.repository, engine.binary, f"sha256:{r.binary_sha256}", r.size_bytes, subject=r.key)
        client.upload_bytes(target.repository, record_bytes)
        client.upload_bytes(target.repository, EMPTY_BLOB)
        digest = client.put_manifest(target.repository, target.reference, raw, MANIFEST_MEDIA)
    pinned = f"oci://{target.registry}/{target.repository}@{digest}"
    log.info("engine %s pushed to %s (%s)", r.key[:12], target.id, digest)
    return pinned


def engine_manifest(engine: InstalledEngine) -> tuple[bytes, bytes]:
    """``engine.json`` and the artifact's manifest (JSON bytes) of an installed engine."""
    r = engine.record
    record = {
        "kind": r.kind,
        "target": r.target,
        "binary_sha256": r.binary_sha256,
        "source": r.source,
        "source_digest": r.source_digest,
        "subdir": r.subdir,
        "flags": list(r.flags),
        "version": r.version,
    }
    record_bytes = json.dumps(record, sort_keys=True, indent=1).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA,
        "artifactType": ENGINE_ARTIFACT,
        "config": {"mediaType": EMPTY_CONFIG, "digest": EMPTY_DIGEST, "size": len(EMPTY_BLOB)},
        "layers": [
            _layer(BINARY_LAYER, f"sha256:{r.binary_sha256}", r.size_bytes, r.target),
            _layer(RECORD_LAYER, "sha256:" + hashlib.sha256(record_bytes).hexdigest(), len(record_bytes), RECORD_NAME),
        ],
        "annotations": {
            f"{ANN}kind": r.kind,
            f"{ANN}version": r.version or "",
            f"{ANN}source-digest": r.source_digest,
            f"{ANN}flags": json.dumps(list(r.flags)),
            f"{ANN}key": r.key,
        },
    }
    return record_bytes, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _layer(media_type: str, digest: str, size: int, title: str) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "annotations": {"org.opencontainers.image.title": title},
    }


def pull(host: EngineHost, ref: str, digest: str | None) -> BinaryIdentity:
    """Install the engine at ``ref`` (verified like a model), unless the store already holds that build."""
    _oci(ref, "--from")
    resolved = host.ensure_present(ref, digest)
    root = Path(resolved.local_path)
    record = _engine_record(root / RECORD_NAME, resolved.id)
    origin = f"{ref.split('@', 1)[0]}@{_manifest_digest(resolved.metadata)}"
    return install_built(host, record, root / str(record["target"]), origin, resolved.id)


def install_built(host: EngineHost, record: dict[str, Any], binary: Path, origin: str, subject: str) -> BinaryIdentity:
    """Install the binary at ``binary`` (a file in the cache, read ``O_NOFOLLOW``) as ``record`` describes it: copied
    while hashed, it must have the recorded sha256, or nothing is installed."""
    target = str(record["target"])
    flags = [str(f) for f in record["flags"]]
    key = key_of(str(record["source_digest"]), str(record["subdir"]), target, flags)
    home = engine_home(host, key)
    found = built(home, target)
    if found is not None and found.sha256 == record["binary_sha256"]:
        return found
    host.store.ensure_layout()
    lock = FileLock(host.store.locks_dir / f"engine-build-{key}.lock", f"the install of {target} ({key[:12]})")
    lock.acquire(timeout_s=3600)
    try:
        staged = home.parent / f".{key}.pull"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(mode=0o700, parents=True)
        try:
            with os.fdopen(open_in_cache(binary, os.O_RDONLY, single_link=False), "rb") as src:
                verified_copy_from(src, f"sha256:{record['binary_sha256']}", staged / target, subject)
            binary_sha256, fingerprint = record_binary(staged / target)
            write_record(
                staged,
                {
                    **record,
                    "origin": origin,
                    "binary_sha256": binary_sha256,
                    "binary_fingerprint": fingerprint,
                },
            )
            os.chmod(staged, 0o755)
            shutil.rmtree(home, ignore_errors=True)
            os.rename(staged, home)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    finally:
        lock.release()
    found = built(home, target)
    assert found is not None
    return found


def _manifest_digest(metadata: dict[str, Any]) -> str:
    oci = metadata.get("oci")
    return str(oci.get("manifest_digest", "")) if isinstance(oci, dict) else ""


def _engine_record(path: Path, subject: str) -> dict[str, Any]:
    """``engine.json`` of a pulled engine, every field checked (it names a file and the build's flags)."""
    try:
        with os.fdopen(open_in_cache(path, os.O_RDONLY, single_link=False), "rb") as src:
            data = src.read(1 << 16)
    except FileNotFoundError:
        raise InvalidInput(f"{subject} is not an engine pushed by `engines push` (no {RECORD_NAME})") from None
    return parse_engine_record(data, subject)


def parse_engine_record(data: bytes, subject: str) -> dict[str, Any]:
    """``engine.json``'s bytes, every field checked."""
    try:
        record = json.loads(data)
    except ValueError:
        raise CorruptModel(subject, f"{RECORD_NAME} is not JSON") from None
    ok = (
        isinstance(record, dict)
        and all(k in record for k in _FIELDS)
        and record["kind"] == "llamacpp"
        and isinstance(record["target"], str)
        and TARGET_NAME.fullmatch(record["target"]) is not None
        and record["target"] != RECORD_NAME
        and isinstance(record["binary_sha256"], str)
        and _HEX64.fullmatch(record["binary_sha256"]) is not None
        and all(isinstance(record[k], str) for k in ("source", "source_digest", "subdir"))
        and isinstance(record["flags"], list)
        and all(isinstance(f, str) for f in record["flags"])
    )
    if not ok:
        raise CorruptModel(subject, f"{RECORD_NAME} is not a llama.cpp engine record (fields: {', '.join(_FIELDS)})")
    return {k: record[k] for k in _FIELDS}
