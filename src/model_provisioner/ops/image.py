"""``push ID oci://… --as-image``: a model as an OCI *image*, so Kubernetes image volumes on containerd, KServe
modelcars and any image tool can mount it. One reproducible tar layer per file, the file under ``/models/``
(mtime 0, uid and gid 0, mode 0444, parent directories 0755): the same file always makes the same layer, so
layers are shared between images and pushed once. The image config lists the layers' ``rootfs.diff_ids``
(uncompressed, so a diff id is the layer digest). ``ensure`` of such an image unpacks the layers and takes
the files under ``models/`` as the model's (docs/fleet.md)."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

from model_provisioner.core.refs import OciRef
from model_provisioner.net.registry.client import RegistryClient
from model_provisioner.net.registry.referrers import Subject
from model_provisioner.ops.cache import Cache
from model_provisioner.sources.team_mirrors import ANN_DIGEST, ANN_SOURCE
from model_provisioner.storage.catalog import CatalogEntry

IMAGE_ROOT = "models"
ANN_IMAGE_ROOT = "org.model-provisioner.image-root"
IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"


class _HashingWriter:
    """A file that hashes what is written to it: the layer's digest without reading it back."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


def _layer(path: str, source: Path, out: Path) -> tuple[str, int]:
    """Write the reproducible tar of one file at ``models/<path>``; returns (sha256 hex, size)."""
    parts = f"{IMAGE_ROOT}/{path}".split("/")
    with open(out, "wb") as raw:
        sink = _HashingWriter(raw)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
            for depth in range(1, len(parts)):
                folder = tarfile.TarInfo("/".join(parts[:depth]) + "/")
                folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(folder)
            member = tarfile.TarInfo("/".join(parts))
            member.size, member.mode, member.mtime = os.stat(source).st_size, 0o444, 0
            with open(source, "rb") as data:
                tar.addfile(member, data)
    return sink.hasher.hexdigest(), sink.size


def push_image(
    cache: Cache, entry: CatalogEntry, files: list[tuple[str, Path]], target: OciRef
) -> tuple[int, int, Subject]:
    """Push ``files`` ([(path in the model, file to read)]) as an image; returns (bytes uploaded, bytes
    already there, the manifest as a signature's subject)."""
    uploaded = skipped = 0
    layers = []
    cache.store.ensure_layout()
    with RegistryClient(target.registry, cache.settings) as client:
        for path, source in sorted(files):
            staged = cache.store.partial_dir / f"image-layer-{hashlib.sha256(path.encode()).hexdigest()[:16]}.tar"
            try:
                sha_hex, size = _layer(path, source, staged)
                digest = f"sha256:{sha_hex}"
                if client.upload_blob(target.repository, staged, digest, size, subject=entry.id):
                    uploaded += size
                else:
                    skipped += size
            finally:
                staged.unlink(missing_ok=True)
            layers.append({"mediaType": TAR_LAYER, "digest": digest, "size": size})
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {ANN_SOURCE: entry.id, ANN_DIGEST: entry.digest or ""}},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = client.upload_bytes(target.repository, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": IMAGE_MANIFEST,
            "config": {"mediaType": IMAGE_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": layers,
            "annotations": {ANN_SOURCE: entry.id, ANN_DIGEST: entry.digest or "", ANN_IMAGE_ROOT: IMAGE_ROOT},
        }
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = client.put_manifest(target.repository, target.reference, raw, IMAGE_MANIFEST)
    return uploaded, skipped, Subject(manifest_digest, len(raw), IMAGE_MANIFEST)
