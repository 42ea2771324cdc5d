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

``--sign`` (``Signer``) adds an OpenSSF model-signing signature over the files as pushed: for OCI an artifact
referring to the model's manifest (``net/registry/referrers.py``: the referrers API, else the referrers tag),
for S3 ``model-provisioner.sig`` beside the files, listed in the manifest (docs/fleet.md, "Signed pushes").
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import DigestMismatch, InvalidInput, NotFound, OfflineError
from model_provisioner.core.extras import require_extra
from model_provisioner.core.hashing import HashingReader, hash_file, repo_digest
from model_provisioner.core.refs import OciRef, S3Ref, parse
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.net.registry.client import RegistryClient
from model_provisioner.net.registry.referrers import SIGSTORE_BUNDLE, Subject, publish_referrer
from model_provisioner.ops.cache import Cache
from model_provisioner.ops.image import push_image
from model_provisioner.sources.s3 import MANIFEST_NAME, check_endpoint, s3_client, s3_error
from model_provisioner.sources.team_mirrors import ANN_DIGEST, ANN_REVISION, ANN_SOURCE, mirror_ref
from model_provisioner.storage.catalog import CatalogEntry
from model_provisioner.storage.views import view_source_name
from model_provisioner.verify.signing import SIGNATURE_FILE, Signer, sign_files
from model_provisioner.verify.trees import scan_tree

log = logging.getLogger("model_provisioner")

MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
SINGLE_PUT_MAX = 4 << 30
#: an S3 mirror's signature, beside its files and listed in its manifest
S3_SIGNATURE_NAME = "model-provisioner.sig"


@dataclass(frozen=True)
class PushResult:
    destination: str
    files: int
    bytes_uploaded: int
    bytes_skipped: int
    digest: str
    manifest_digest: str | None = None
    #: where the signature went: the referring artifact's manifest digest, or the S3 object
    signature: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class PushFile:
    path: str  # inside the model
    sha256: str  # hex: what the catalog verified
    size: int
    source: Path  # where the bytes are read from: a blob, or the user's own file


def entry_files(prov: Cache, entry: CatalogEntry) -> list[PushFile]:
    """The files of an Active entry and where to read them: store blobs, or (a model registered in place: a
    local file or directory) the user's files, which must still be the bytes that were verified."""
    files = prov.catalog.files(entry.id)
    if files:
        out = [PushFile(f.path, f.blob, f.size_bytes, prov.store.blob_path(f.blob)) for f in files]
    elif entry.blob:
        name = view_source_name(entry.local_path)
        out = [PushFile(name, entry.blob, entry.size_bytes, prov.store.blob_path(entry.blob))]
    else:
        return _local_files(entry)
    for file in out:
        if not prov.store.has_blob(file.sha256):
            raise NotFound(f"{entry.id}: blob sha256:{file.sha256} is missing from the store; run verify --repair")
    return out


def _local_files(entry: CatalogEntry) -> list[PushFile]:
    """A local directory is re-hashed here (its files are not recorded one by one) and must still have the
    verified repo digest; a local file's bytes are checked as they are uploaded."""
    if "local_tree" in entry.metadata:
        root = Path(str(entry.metadata["local_tree"]))
        out = []
        for rel, path in scan_tree(root, entry.id):
            hashed = hash_file(path, [])
            out.append(PushFile(rel, hashed.sha256.hex, hashed.size_bytes, path))
        actual = repo_digest([(f.path, f.sha256, f.size) for f in out])
        if actual != entry.digest:
            raise DigestMismatch(
                f"{entry.id} ({root})",
                str(entry.digest),
                actual,
                "it changed since it was verified; nothing was pushed (run ensure to verify it again)",
            )
        return out
    if not entry.digest or not entry.digest.startswith("sha256:"):
        raise InvalidInput(f"{entry.id} has no sha256 digest recorded; run ensure on it again before pushing")
    path = Path(entry.local_path)
    return [PushFile(path.name, entry.digest.split(":", 1)[1], entry.size_bytes, path)]


def push(
    prov: Cache, model: str, destination: str, *, as_image: bool = False, sign: Signer | None = None
) -> PushResult:
    entry = prov.catalog.get(model) or prov.catalog.get(parse(model).id)
    if entry is None:
        raise NotFound(f"{model} is not in the catalog; ensure it first")
    if entry.lifecycle is not Lifecycle.ACTIVE:
        raise InvalidInput(f"{entry.id} is {entry.lifecycle}; only Active (verified) models are pushed")
    files = entry_files(prov, entry)
    target = mirror_ref(destination, entry.id) if destination.endswith("/") else parse(destination)
    prov.settings.policy.check_ref(target)
    if prov.settings.offline:
        raise OfflineError(f"offline mode is on: cannot push to {target.id}")
    if isinstance(target, OciRef):
        if target.digest is not None:
            raise InvalidInput(
                f"push to {target.id}: a manifest is pushed under a tag (its digest is whatever it hashes to); "
                "give oci://registry/repo:tag or a mirror root ending in '/'"
            )
        if as_image:
            uploaded, skipped, subject = push_image(prov, entry, [(f.path, f.source) for f in files], target)
            log.info("%s: pushed to %s as an image (%s)", entry.id, target.id, subject.digest)
            signed = _sign_oci(prov, entry, files, target, subject, sign) if sign else None
            return PushResult(target.id, len(files), uploaded, skipped, entry.digest or "", subject.digest, signed)
        return _push_oci(prov, entry, files, target, sign)
    if isinstance(target, S3Ref):
        if not target.is_prefix:
            raise InvalidInput(
                f"push to S3 takes a mirror root ending in '/' (the model goes under it, where mirrors.models "
                f"looks), got {destination!r}"
            )
        if as_image:
            raise InvalidInput("--as-image pushes to an OCI registry (oci://registry/repo:tag), not to S3")
        return _push_s3(prov, entry, files, target, sign)
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


def _file_metadata(file: PushFile, entry: CatalogEntry) -> str:
    """The ModelPack layer annotation ``org.cncf.model.file.metadata+json``: the file as a tar header would
    describe it (a regular file, read-only, owned by root, the model's creation time)."""
    meta = {
        "name": file.path.rsplit("/", 1)[-1],
        "mode": 0o444,
        "uid": 0,
        "gid": 0,
        "size": file.size,
        "mtime": _iso(entry.created_ms),
        "typeflag": ord("0"),
    }
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))


def _signature(prov: Cache, entry: CatalogEntry, files: list[PushFile], sign: Signer) -> bytes:
    return sign_files([(f.path, f.source) for f in files], prov.store.partial_dir, entry.id, sign)


def _sign_oci(
    prov: Cache, entry: CatalogEntry, files: list[PushFile], target: OciRef, subject: Subject, sign: Signer
) -> str:
    bundle = _signature(prov, entry, files, sign)
    with RegistryClient(target.registry, prov.settings) as client:
        digest = publish_referrer(
            client,
            target.repository,
            subject,
            SIGSTORE_BUNDLE,
            bundle,
            title=SIGNATURE_FILE,
            annotations={ANN_SOURCE: entry.id},
        )
    log.info("%s: signature published as %s, referring to %s", entry.id, digest, subject.digest)
    return digest


def modelpack_manifest(entry: CatalogEntry, files: list[PushFile]) -> tuple[bytes, bytes]:
    """The ModelPack config and manifest (JSON bytes) of ``entry`` made of ``files`` (one raw layer each)."""
    layers = [
        {
            "mediaType": _modelpack_layer_type(file.path),
            "digest": f"sha256:{file.sha256}",
            "size": file.size,
            "annotations": {
                "org.cncf.model.filepath": file.path,
                "org.cncf.model.file.metadata+json": _file_metadata(file, entry),
                "org.opencontainers.image.title": file.path,
            },
        }
        for file in files
    ]
    config = {
        "descriptor": {"name": entry.id, "createdAt": _iso(entry.created_ms)},
        "config": {"format": entry.format},
        "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    annotations = {ANN_SOURCE: entry.id, ANN_DIGEST: entry.digest or ""}
    revision = entry.metadata.get("revision")
    if isinstance(revision, str) and revision:
        annotations[ANN_REVISION] = revision
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA,
        "artifactType": MODELPACK_ARTIFACT,
        "config": {
            "mediaType": MODELPACK_CONFIG,
            "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
            "size": len(config_bytes),
        },
        "layers": layers,
        "annotations": annotations,
    }
    return config_bytes, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _push_oci(
    prov: Cache, entry: CatalogEntry, files: list[PushFile], target: OciRef, sign: Signer | None
) -> PushResult:

    uploaded = skipped = 0
    with RegistryClient(target.registry, prov.settings) as client:
        for file in files:
            if client.upload_blob(target.repository, file.source, f"sha256:{file.sha256}", file.size, subject=entry.id):
                uploaded += file.size
            else:
                skipped += file.size
        config_bytes, raw = modelpack_manifest(entry, files)
        client.upload_bytes(target.repository, config_bytes)
        manifest_digest = client.put_manifest(target.repository, target.reference, raw, MANIFEST_MEDIA)
    log.info("%s: pushed to %s (%s)", entry.id, target.id, manifest_digest)
    subject = Subject(manifest_digest, len(raw), MANIFEST_MEDIA)
    signed = _sign_oci(prov, entry, files, target, subject, sign) if sign else None
    return PushResult(target.id, len(files), uploaded, skipped, entry.digest or "", manifest_digest, signed)


def _push_s3(prov: Cache, entry: CatalogEntry, files: list[PushFile], target: S3Ref, sign: Signer | None) -> PushResult:

    require_extra("s3", "pushing to S3")
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415  # heavy: boto3, imported only when this path runs

    client = s3_client(prov.settings)
    check_endpoint(client, prov.settings)
    uploaded = 0
    try:
        for file in files:
            key = target.key + file.path
            with open(file.source, "rb") as raw:
                body = HashingReader(raw)
                if file.size > SINGLE_PUT_MAX:
                    # multipart: S3 keeps a composite checksum; pulls check the manifest's sha256 instead
                    client.upload_fileobj(body, target.bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"})
                else:
                    client.put_object(
                        Bucket=target.bucket,
                        Key=key,
                        Body=body,
                        ChecksumSHA256=base64.b64encode(bytes.fromhex(file.sha256)).decode(),
                    )
            if body.hexdigest() != file.sha256:
                client.delete_object(Bucket=target.bucket, Key=key)
                raise DigestMismatch(
                    f"{entry.id} [{file.source}]",
                    f"sha256:{file.sha256}",
                    f"sha256:{body.hexdigest()}",
                    "it changed since it was verified; the upload was deleted and no manifest written",
                )
            uploaded += file.size
        signed = None
        if sign is not None:
            signed = target.id + S3_SIGNATURE_NAME
            client.put_object(
                Bucket=target.bucket,
                Key=target.key + S3_SIGNATURE_NAME,
                Body=_signature(prov, entry, files, sign),
                ContentType=SIGSTORE_BUNDLE,
            )
        manifest: dict[str, Any] = {
            "id": entry.id,
            "digest": entry.digest,
            "format": entry.format,
            "revision": entry.metadata.get("revision"),
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files],
            **({"signatures": [S3_SIGNATURE_NAME]} if signed else {}),
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
    return PushResult(target.id, len(files), uploaded, 0, entry.digest or "", signature=signed)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
