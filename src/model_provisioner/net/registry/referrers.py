"""Artifacts that refer to a manifest (a signature of a pushed model): published and found as the OCI
distribution spec says (docs/fleet.md, "Signed pushes").

- Publish: the referring artifact is an image manifest whose ``subject`` is the model's manifest, with an
  empty config (``application/vnd.oci.empty.v1+json``) and one layer (the signature bundle). It is put by
  its digest. A registry with the referrers API answers ``OCI-Subject``; for one without it (the spec's
  fallback) the *referrers tag* ``sha256-<hex of the subject>`` is an image index listing every referrer,
  read, extended and put back.
- Find: ``GET /v2/<repo>/referrers/<digest>?artifactType=…``; a 404 falls back to the referrers tag. Each
  listed manifest is read by digest and believed only if its ``subject`` is the model's manifest (a listing
  is only a hint); the layers are small blobs checked against their descriptors. Bounded: at most
  ``MAX_REFERRERS`` artifacts, ``MAX_BUNDLE_BYTES`` each.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from model_provisioner.core.errors import CorruptModel, NotFound, TransferFailed
from model_provisioner.core.redact import redact_text
from model_provisioner.net.registry.client import RegistryClient
from model_provisioner.net.registry.manifests import OCI_INDEX, OCI_MANIFEST, parse_descriptor, read_manifest

log = logging.getLogger("model_provisioner")

EMPTY_CONFIG = b"{}"
EMPTY_MEDIA = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()
MAX_REFERRERS = 16
#: the artifact type of a published signature: a sigstore bundle, as model-signing writes it (``push --sign``)
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
MAX_BUNDLE_BYTES = 1 << 20


@dataclass(frozen=True)
class Subject:
    """The manifest an artifact refers to."""

    digest: str
    size: int
    media_type: str = OCI_MANIFEST

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def referrers_tag(digest: str) -> str:
    """The distribution spec's fallback tag for the referrers of ``digest``: ``sha256-<hex>``."""
    algo, hex_value = digest.split(":", 1)
    return f"{algo}-{hex_value}"


def publish_referrer(
    client: RegistryClient,
    repository: str,
    subject: Subject,
    artifact_type: str,
    blob: bytes,
    *,
    title: str,
    annotations: dict[str, str] | None = None,
) -> str:
    """Push ``blob`` as an artifact referring to ``subject``; returns the artifact's manifest digest."""
    client.upload_bytes(repository, EMPTY_CONFIG)
    blob_digest = client.upload_bytes(repository, blob)
    raw = referrer_manifest(subject, artifact_type, blob_digest, len(blob), title=title, annotations=annotations)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    response = _put(client, repository, digest, raw, OCI_MANIFEST)
    if response.headers.get("OCI-Subject") == subject.digest:
        return digest  # the registry lists it through its referrers API
    listing = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(raw), "artifactType": artifact_type}
    if annotations:
        listing["annotations"] = annotations
    _add_to_tag_index(client, repository, subject, listing)
    return digest


def referrer_manifest(
    subject: Subject,
    artifact_type: str,
    blob_digest: str,
    blob_size: int,
    *,
    title: str,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """The manifest of an artifact referring to ``subject`` whose one layer is the blob (JSON bytes)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_MEDIA, "digest": EMPTY_DIGEST, "size": len(EMPTY_CONFIG)},
        "layers": [
            {
                "mediaType": artifact_type,
                "digest": blob_digest,
                "size": blob_size,
                "annotations": {"org.opencontainers.image.title": title},
            }
        ],
        "subject": subject.descriptor(),
        **({"annotations": annotations} if annotations else {}),
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _add_to_tag_index(client: RegistryClient, repository: str, subject: Subject, listing: dict[str, Any]) -> None:
    tag = referrers_tag(subject.digest)
    try:
        raw, _, _ = client.get_manifest(repository, tag, f"{repository}:{tag}")
        index = json.loads(raw)
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise ValueError("not an index")
    except NotFound:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    except (ValueError, RecursionError):
        log.warning("%s: the referrers tag %s was not an image index; replacing it", repository, tag)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    entries = [m for m in index["manifests"] if not (isinstance(m, dict) and m.get("digest") == listing["digest"])]
    index["manifests"] = [*entries, listing]
    raw = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    _put(client, repository, tag, raw, OCI_INDEX)


def _put(client: RegistryClient, repository: str, reference: str, data: bytes, media_type: str) -> Any:
    response = client.request(
        "PUT",
        f"/v2/{repository}/manifests/{reference}",
        repository,
        actions="pull,push",
        headers={"Content-Type": media_type},
        content=data,
        follow=False,
    )
    if response.status_code != 201:
        detail = redact_text(response.text[:300]) if response.status_code < 500 else ""
        raise TransferFailed(
            f"registry {client.registry}: putting {repository}:{reference} gave {response.status_code} {detail}".strip()
        )
    return response


def find_referrers(
    client: RegistryClient, repository: str, subject_digest: str, artifact_type: str, who: str
) -> list[bytes]:
    """The blobs of the artifacts of ``artifact_type`` that refer to ``subject_digest`` (newest listing last);
    empty when there are none."""
    listed = _listing(client, repository, subject_digest, artifact_type, who)
    found: list[bytes] = []
    for descriptor in listed[-MAX_REFERRERS:]:
        try:
            raw, _, _ = client.get_manifest(repository, descriptor.digest, who)
        except NotFound:  # a listing that outlived its artifact (deleted, garbage-collected)
            log.warning("%s: the referrer %s is listed but gone; ignored", who, descriptor.digest)
            continue
        try:
            manifest = json.loads(raw)
        except (ValueError, RecursionError):
            raise CorruptModel(who, f"the referrer {descriptor.digest} is not JSON") from None
        if not isinstance(manifest, dict):
            raise CorruptModel(who, f"the referrer {descriptor.digest} is not a JSON object")
        subject = manifest.get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != subject_digest:
            log.warning("%s: %s is listed as a referrer but refers to something else; ignored", who, descriptor.digest)
            continue
        layers = manifest.get("layers")
        for layer in layers if isinstance(layers, list) else []:
            blob = parse_descriptor(layer, who)
            if blob.media_type == artifact_type:
                found.append(client.read_blob(repository, blob, who, limit=MAX_BUNDLE_BYTES))
    return found


def _listing(client: RegistryClient, repository: str, digest: str, artifact_type: str, who: str) -> list[Any]:
    response = client.request(
        "GET",
        # percent-encoded: a query's '+' means a space to the server (the media type has one)
        f"/v2/{repository}/referrers/{digest}?artifactType={quote(artifact_type, safe='')}",
        repository,
        headers={"Accept": OCI_INDEX},
        stream=True,
    )
    try:
        if response.status_code == 200:
            raw, _, _ = read_manifest(response, "", who, f"registry {client.registry}")
        elif response.status_code == 404:
            raw = b""
        else:
            raise TransferFailed(f"{who}: registry {client.registry} answered {response.status_code} for referrers")
    finally:
        response.close()
    if not raw:  # no referrers API: the referrers tag schema
        try:
            raw, _, _ = client.get_manifest(repository, referrers_tag(digest), who)
        except NotFound:
            return []
    try:
        index = json.loads(raw)
    except (ValueError, RecursionError):
        raise CorruptModel(who, "the referrers listing is not JSON") from None
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise CorruptModel(who, "the referrers listing is not an image index")
    descriptors = [parse_descriptor(entry, who) for entry in entries]
    return [d for d in descriptors if d.artifact_type == artifact_type]
