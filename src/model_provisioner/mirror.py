"""Team mirrors: ``push`` a provisioned model to an OCI registry or an S3 prefix; pull it back by id.

A destination ending in ``/`` (``oci://registry/team/``, ``s3://bucket/mirror/``) is a *mirror root*: the
model goes to a location derived from its id (``mirror_ref``), which is where ``mirrors.models`` in the
settings looks for it on other machines, before the origin. An ``oci://registry/repo[:tag]`` destination
is used as given (pull it back by that ref); S3 destinations are always mirror roots.

What is pushed carries the digests the origin was verified against:
- OCI: a CNCF ModelPack artifact. One raw layer per file (so layer digests are the files' sha256 and the
  blobs dedupe with the cache on pull), ``org.cncf.model.filepath`` naming each, a ModelPack config with
  the format and ``modelfs.diffIds``, and manifest annotations with the source id, its digest and
  revision.
- S3: every file under the prefix with a ``ChecksumSHA256``, then ``model-provisioner.json`` (id, digest,
  revision, files with sha256 and size) written last, so a half-finished push is never taken for a
  mirror copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import CatalogEntry, Lifecycle
from .errors import InvalidInput, NotFound
from .refs import OciRef, S3Ref, parse

if TYPE_CHECKING:
    from .provisioner import ModelProvisioner

log = logging.getLogger("model_provisioner")

MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
ANN_SOURCE = "org.model-provisioner.source-id"
ANN_DIGEST = "org.model-provisioner.digest"
ANN_REVISION = "org.model-provisioner.revision"
SINGLE_PUT_MAX = 4 << 30


def _slug(model_id: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")[:80] or "model"


def mirror_ref(root: str, model_id: str) -> OciRef | S3Ref:
    """Where a mirror root keeps ``model_id``: readable slug + a hash of the exact id (no collisions)."""
    key = hashlib.sha256(model_id.encode()).hexdigest()
    base = root.rstrip("/")
    if base.startswith("oci://"):
        ref = parse(f"{base}/{_slug(model_id)}:id-{key[:40]}")
    elif base.startswith("s3://"):
        ref = parse(f"{base}/{_slug(model_id)}-{key[:16]}/")
    else:
        raise InvalidInput(f"mirror root {root!r} must be oci://registry/repo/ or s3://bucket/prefix/")
    assert isinstance(ref, OciRef | S3Ref)
    return ref


@dataclass(frozen=True)
class PushResult:
    destination: str
    files: int
    bytes_uploaded: int
    bytes_skipped: int
    digest: str
    manifest_digest: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _entry_files(prov: ModelProvisioner, entry: CatalogEntry) -> list[tuple[str, str, int]]:
    """(path in the model, blob, size) for an Active entry; the blobs must be present."""
    files = prov.catalog.files(entry.id)
    if files:
        out = [(f.path, f.blob, f.size_bytes) for f in files]
    elif entry.blob:
        name = Path(entry.local_path).name
        name = re.sub(r"@[0-9a-f]{64}$", "", name) if "@" in name else name
        out = [(name, entry.blob, entry.size_bytes)]
    else:
        raise InvalidInput(
            f"{entry.id} is registered in place (a local file outside the store); ensure a copy into the "
            "store first, or push a remote ref"
        )
    for _, blob, _ in out:
        if not prov.store.has_blob(blob):
            raise NotFound(f"{entry.id}: blob sha256:{blob} is missing from the store; run verify --repair")
    return out


def push(prov: ModelProvisioner, model: str, destination: str) -> PushResult:
    entry = prov.catalog.get(model) or prov.catalog.get(parse(model).id)
    if entry is None:
        raise NotFound(f"{model} is not in the catalog; ensure it first")
    if entry.lifecycle is not Lifecycle.ACTIVE:
        raise InvalidInput(f"{entry.id} is {entry.lifecycle}; only Active (verified) models are pushed")
    files = _entry_files(prov, entry)
    target = mirror_ref(destination, entry.id) if destination.endswith("/") else parse(destination)
    prov.settings.policy.check_ref(target)
    if prov.settings.offline:
        from .errors import OfflineError

        raise OfflineError(f"offline mode is on: cannot push to {target.id}")
    if isinstance(target, OciRef):
        if target.digest is not None:
            raise InvalidInput(
                f"push to {target.id}: a manifest is pushed under a tag (its digest is whatever it hashes to); "
                "give oci://registry/repo:tag or a mirror root ending in '/'"
            )
        return _push_oci(prov, entry, files, target)
    if isinstance(target, S3Ref):
        if not target.is_prefix:
            raise InvalidInput(
                f"push to S3 takes a mirror root ending in '/' (the model goes under it, where mirrors.models "
                f"looks), got {destination!r}"
            )
        return _push_s3(prov, entry, files, target)
    raise InvalidInput(f"push destination must be oci://… or s3://…/, got {destination!r}")


def _modelpack_layer_type(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".gguf", ".safetensors", ".bin", ".pt", ".onnx", ".plan", ".pth")):
        return "application/vnd.cncf.model.weight.v1.raw"
    if lower.endswith(".py"):
        return "application/vnd.cncf.model.code.v1.raw"
    if lower.rsplit("/", 1)[-1].startswith(("readme", "license")) or lower.endswith(".md"):
        return "application/vnd.cncf.model.doc.v1.raw"
    return "application/vnd.cncf.model.weight.config.v1.raw"


def _push_oci(
    prov: ModelProvisioner, entry: CatalogEntry, files: list[tuple[str, str, int]], target: OciRef
) -> PushResult:
    from .oci import RegistryClient

    uploaded = skipped = 0
    layers = []
    with RegistryClient(target.registry, prov.settings) as client:
        for path, blob, size in files:
            digest = f"sha256:{blob}"
            if client.upload_blob(target.repository, prov.store.blob_path(blob), digest, size):
                uploaded += size
            else:
                skipped += size
            layers.append(
                {
                    "mediaType": _modelpack_layer_type(path),
                    "digest": digest,
                    "size": size,
                    "annotations": {"org.cncf.model.filepath": path, "org.opencontainers.image.title": path},
                }
            )
        config = {
            "descriptor": {"name": entry.id, "createdAt": _iso(entry.created_ms)},
            "config": {"format": entry.format},
            "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = client.upload_bytes(target.repository, config_bytes)
        annotations = {ANN_SOURCE: entry.id, ANN_DIGEST: entry.digest or ""}
        revision = entry.metadata.get("revision")
        if isinstance(revision, str) and revision:
            annotations[ANN_REVISION] = revision
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA,
            "artifactType": MODELPACK_ARTIFACT,
            "config": {"mediaType": MODELPACK_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": layers,
            "annotations": annotations,
        }
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = client.put_manifest(target.repository, target.reference, raw, MANIFEST_MEDIA)
    log.info("%s: pushed to %s (%s)", entry.id, target.id, manifest_digest)
    return PushResult(target.id, len(files), uploaded, skipped, entry.digest or "", manifest_digest)


def _push_s3(
    prov: ModelProvisioner, entry: CatalogEntry, files: list[tuple[str, str, int]], target: S3Ref
) -> PushResult:
    import base64

    from botocore.exceptions import BotoCoreError, ClientError

    from .fetchers.s3 import MANIFEST_NAME, check_endpoint, s3_client, s3_error

    client = s3_client(prov.settings)
    check_endpoint(client, prov.settings)
    uploaded = 0
    try:
        for path, blob, size in files:
            if size > SINGLE_PUT_MAX:
                # multipart: S3 keeps a composite checksum; pulls check the manifest's sha256 instead
                client.upload_file(
                    str(prov.store.blob_path(blob)),
                    target.bucket,
                    target.key + path,
                    ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                )
            else:
                with open(prov.store.blob_path(blob), "rb") as body:
                    client.put_object(
                        Bucket=target.bucket,
                        Key=target.key + path,
                        Body=body,
                        ChecksumSHA256=base64.b64encode(bytes.fromhex(blob)).decode(),
                    )
            uploaded += size
        manifest = {
            "id": entry.id,
            "digest": entry.digest,
            "format": entry.format,
            "revision": entry.metadata.get("revision"),
            "files": [{"path": p, "sha256": b, "size": s} for p, b, s in files],
        }
        client.put_object(
            Bucket=target.bucket,
            Key=target.key + MANIFEST_NAME,
            Body=json.dumps(manifest, indent=1, sort_keys=True).encode(),
            ContentType="application/json",
        )
    except (BotoCoreError, ClientError) as exc:
        raise s3_error(exc, client, target.id) from None
    log.info("%s: pushed %d files to %s", entry.id, len(files), target.id)
    return PushResult(target.id, len(files), uploaded, 0, entry.digest or "")


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
