"""OCI and Docker manifests as we read them: media types, descriptors, manifests and indexes, parsed from
bytes whose digest was checked (``client.RegistryClient.get_manifest``)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from model_provisioner.core.errors import CorruptModel
from model_provisioner.net.http import read_at_most

if TYPE_CHECKING:
    import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_MANIFEST_BYTES = 4 << 20  # the distribution spec's suggested limit
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]
    artifact_type: str | None = None
    platform: dict[str, Any] | None = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class Manifest:
    """A parsed image manifest (never an index: indexes are resolved to one of their manifests)."""

    digest: str
    media_type: str
    raw: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]
    artifact_type: str | None


def parse_descriptor(data: Any, where: str) -> Descriptor:
    """Validate one descriptor; every problem is a CorruptModel naming ``where`` (never a KeyError)."""
    if not isinstance(data, dict):
        raise CorruptModel(where, "a descriptor is not a JSON object")
    media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
    if not isinstance(media_type, str) or not media_type or len(media_type) > 255:
        raise CorruptModel(where, "a descriptor has no valid mediaType")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise CorruptModel(where, f"descriptor digest {str(digest)[:80]!r} is not sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > 1 << 50:
        raise CorruptModel(where, f"descriptor size {str(size)[:40]!r} is not a non-negative integer")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise CorruptModel(where, "descriptor annotations must map strings to strings")
    artifact_type = data.get("artifactType")
    platform = data.get("platform")
    return Descriptor(
        media_type,
        digest,
        size,
        dict(annotations),
        artifact_type if isinstance(artifact_type, str) else None,
        platform if isinstance(platform, dict) else None,
    )


def parse_manifest(raw: bytes, digest: str, media_type_header: str | None, where: str) -> Manifest | list[Descriptor]:
    """An image manifest, or the manifest descriptors of an index."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CorruptModel(where, "the manifest is not valid JSON") from None
    if not isinstance(data, dict):
        raise CorruptModel(where, "the manifest is not a JSON object")
    media_type = data.get("mediaType") or (media_type_header or "").split(";")[0].strip()
    if data.get("schemaVersion") != 2:
        raise CorruptModel(where, f"unsupported manifest schemaVersion {data.get('schemaVersion')!r} (need 2)")
    if media_type in (OCI_INDEX, DOCKER_LIST) or ("manifests" in data and "layers" not in data):
        entries = data.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise CorruptModel(where, "the index lists no manifests")
        return [parse_descriptor(e, where) for e in entries[:1024]]
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise CorruptModel(where, "the manifest has no layers list")
    if len(layers) > 10_000:
        raise CorruptModel(where, f"the manifest lists {len(layers)} layers; refusing more than 10000")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise CorruptModel(where, "manifest annotations must be a JSON object")
    artifact_type = data.get("artifactType")
    return Manifest(
        digest=digest,
        media_type=str(media_type),
        raw=raw,
        config=parse_descriptor(data.get("config"), where),
        layers=tuple(parse_descriptor(layer, where) for layer in layers),
        annotations={str(k): str(v) for k, v in annotations.items()},
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
    )


def choose_from_index(entries: list[Descriptor]) -> Descriptor:
    """Prefer a model artifact, then linux/amd64, then the first entry."""
    for entry in entries:
        if entry.artifact_type and ("model" in entry.artifact_type or "ai" in entry.artifact_type):
            return entry
    for entry in entries:
        platform = entry.platform or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return entry
    return entries[0]


def read_manifest(response: httpx.Response, reference: str, subject: str, who: str) -> tuple[bytes, str, str | None]:
    """A manifest's bytes (bounded), digest and media type; a digest reference must match the bytes, and so
    must the ``Docker-Content-Digest`` the server sends."""
    length = int(response.headers.get("Content-Length") or 0)
    if length > MAX_MANIFEST_BYTES:
        raise CorruptModel(subject, f"the manifest is {length} bytes; refusing more than {MAX_MANIFEST_BYTES}")
    raw = read_at_most(response, MAX_MANIFEST_BYTES)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CorruptModel(subject, f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if reference.startswith("sha256:") and digest != reference:
        raise CorruptModel(subject, f"{who} sent a manifest hashing to {digest}, not the requested {reference}")
    header = response.headers.get("Docker-Content-Digest")
    if header and header.startswith("sha256:") and header != digest:
        raise CorruptModel(subject, f"the manifest hashes to {digest} but {who} says {header}")
    return raw, digest, response.headers.get("Content-Type")
