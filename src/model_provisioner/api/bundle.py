"""Air-gapped bundles (docs/fleet.md, "Air-gapped bundles"): ``export`` writes verified models as an OCI image
layout (``ops/oci_layout.py``), ``import`` verifies one and registers its models under their ids.

In the layout each model is its ModelPack manifest (what ``push`` writes, named by
``org.opencontainers.image.ref.name``), and beside it artifacts whose ``subject`` is that manifest: the
model-signing signatures it was pulled with (or ``--sign`` adds) and its CycloneDX BOM. ``index.json`` lists
them all.

Import reads no name on trust: every blob is streamed into the blob store and must hash to its descriptor's
digest; then each model is provisioned by the ordinary pull flow with the bundle as its plan (a team mirror on
disk: the manifest's recorded digest is enforced, the signature policy checks the bundle's signatures, the
layout rules and format checks run), so an imported model is exactly as trusted as a pulled one. No socket is
opened: ``--offline`` import works.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_provisioner.api.bom import bom_of
from model_provisioner.api.bundle_engine import add_engine, check_engine_exportable, import_engine
from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import CorruptModel, InvalidInput, NotFound
from model_provisioner.core.refs import FileRef, parse
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.net.registry.manifests import MAX_MANIFEST_BYTES, Manifest, parse_descriptor, parse_manifest
from model_provisioner.net.registry.referrers import (
    MAX_BUNDLE_BYTES,
    MAX_REFERRERS,
    SIGSTORE_BUNDLE,
    Subject,
    referrer_manifest,
)
from model_provisioner.ops.oci_layout import LayoutReader, LayoutWriter
from model_provisioner.ops.push import MANIFEST_MEDIA, MODELPACK_ARTIFACT, PushFile, entry_files, modelpack_manifest
from model_provisioner.pipeline import ensure as ensure_flow
from model_provisioner.pipeline.context import FetchOptions
from model_provisioner.sources.oci import ENGINE_ARTIFACT, layer_files
from model_provisioner.sources.plan import FetchPlan, RemoteFile
from model_provisioner.sources.team_mirrors import ANN_DIGEST, ANN_REVISION, ANN_SOURCE
from model_provisioner.storage.catalog import CatalogEntry
from model_provisioner.verify.signing import SIGNATURE_FILE, Signer, sign_files

log = logging.getLogger("model_provisioner")

REF_NAME = "org.opencontainers.image.ref.name"
BOM_MEDIA = "application/vnd.cyclonedx+json"
MAX_INDEX_ENTRIES = 1024


@dataclass
class BundleReport:
    path: str
    models: list[dict[str, Any]] = field(default_factory=list)
    bytes_linked: int = 0
    bytes_copied: int = 0
    #: the engine carried (export --engine) or installed (import): its key
    engine: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ref_name(model_id: str) -> str:
    """The layout's name of a model (``skopeo copy oci:DIR:NAME …``): its id as a tag's characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-.")[:120] or "model"


def _exportable(prov: ModelProvisioner, ref: str) -> CatalogEntry:
    entry = prov.catalog.get(ref) or prov.catalog.get(parse(ref).id)
    shown = ref[:200]
    if entry is None:
        raise NotFound(f"{shown!r} is not in the catalog; ensure it first, then export it")
    if entry.lifecycle is not Lifecycle.ACTIVE:
        raise InvalidInput(f"{entry.id} is {entry.lifecycle}; only Active (verified) models are exported")
    if isinstance(parse(entry.id), FileRef):
        raise InvalidInput(
            f"{entry.id} is a local file or directory: it crosses the gap as itself (copy it, with its digest: "
            "`ensure PATH --digest …` on the far side verifies it); export takes models pulled from a source"
        )
    return entry


def export_bundle(
    prov: ModelProvisioner, refs: list[str], dest: Path, *, signer: Signer | None = None, engine: bool = False
) -> BundleReport:
    """Write ``refs`` (Active models) and their signatures and BOMs as an OCI layout at ``dest``."""
    entries = [_exportable(prov, ref) for ref in refs]  # every ref is checked before anything is written
    engine_to_carry = check_engine_exportable(prov) if engine else None
    with_bom = importlib.util.find_spec("cyclonedx") is not None
    if not with_bom:
        log.warning("the bundle carries no BOMs: pip install 'model-provisioner[bom]' to add them")
    files_of = {entry.id: entry_files(prov, entry) for entry in entries}
    writer = LayoutWriter(dest)
    report = BundleReport(str(dest))
    try:
        # linking the blobs into the bundle changes their inodes' ctime: what was trusted stays trusted
        with prov.ledger.keeping_trust(f.sha256 for files in files_of.values() for f in files):
            index = [_add_model(prov, writer, report, entry, files_of[entry.id], signer, with_bom) for entry in entries]
        if engine_to_carry is not None:
            index.append([add_engine(writer, engine_to_carry)])
            report.engine = engine_to_carry.record.key
        writer.finish([descriptor for listed in index for descriptor in listed])
    except BaseException:
        writer.abort()
        raise
    report.bytes_linked, report.bytes_copied = writer.bytes_linked, writer.bytes_copied
    return report


def _add_model(
    prov: ModelProvisioner,
    writer: LayoutWriter,
    report: BundleReport,
    entry: CatalogEntry,
    files: list[PushFile],
    signer: Signer | None,
    with_bom: bool,
) -> list[dict[str, Any]]:
    """One model's blobs, manifest, signatures and BOM; returns their ``index.json`` descriptors."""
    for file in files:
        writer.add_file(file.source, file.sha256, file.size, f"{entry.id} [{file.path}]")
    config, manifest = modelpack_manifest(entry, files)
    writer.add_bytes(config)
    digest = writer.add_bytes(manifest)
    name = ref_name(entry.id)
    listed = [_descriptor(digest, len(manifest), MODELPACK_ARTIFACT, {REF_NAME: name, ANN_SOURCE: entry.id})]
    subject = Subject(digest, len(manifest), MANIFEST_MEDIA)
    bundles = [base64.b64decode(b) for b in entry.metadata.get("signature_bundles") or []]
    if signer is not None:
        bundles.append(sign_files([(f.path, f.source) for f in files], prov.store.partial_dir, entry.id, signer))
    listed += [_referrer(writer, subject, SIGSTORE_BUNDLE, bundle, SIGNATURE_FILE) for bundle in bundles]
    if with_bom:
        listed.append(_referrer(writer, subject, BOM_MEDIA, bom_of(prov, entry).encode(), "bom.cdx.json"))
    report.models.append(
        {"id": entry.id, "digest": entry.digest, "name": name, "signatures": len(bundles), "bom": with_bom}
    )
    return listed


def _descriptor(digest: str, size: int, artifact_type: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "mediaType": MANIFEST_MEDIA,
        "digest": digest,
        "size": size,
        "artifactType": artifact_type,
        "annotations": annotations,
    }


def _referrer(writer: LayoutWriter, subject: Subject, artifact_type: str, blob: bytes, title: str) -> dict[str, Any]:
    writer.add_bytes(b"{}")
    blob_digest = writer.add_bytes(blob)
    raw = referrer_manifest(subject, artifact_type, blob_digest, len(blob), title=title)
    return _descriptor(
        writer.add_bytes(raw), len(raw), artifact_type, {"org.opencontainers.artifact.subject": subject.digest}
    )


@dataclass
class _Read:
    manifest: Manifest
    subject: str | None


def import_bundle(prov: ModelProvisioner, source: Path) -> BundleReport:
    """Verify the bundle at ``source`` and register its models (each under its id, by the pull flow)."""
    report = BundleReport(str(source))
    with LayoutReader(source) as reader:
        where = str(source)[:200]
        listed = reader.index()
        if len(listed) > MAX_INDEX_ENTRIES:
            raise CorruptModel(
                where, f"index.json lists {len(listed)} manifests; refusing more than {MAX_INDEX_ENTRIES}"
            )
        read: list[_Read] = []
        for item in listed:
            descriptor = parse_descriptor(item, where)
            raw = reader.read_small(descriptor.digest, MAX_MANIFEST_BYTES, where)
            parsed = parse_manifest(raw, descriptor.digest, descriptor.media_type, where)
            if not isinstance(parsed, Manifest):
                raise CorruptModel(where, f"{descriptor.digest} is a nested index; a bundle lists manifests only")
            read.append(_Read(parsed, _subject_of(raw)))
        models = [r.manifest for r in read if r.subject is None and r.manifest.annotations.get(ANN_SOURCE)]
        engines = [r.manifest for r in read if r.subject is None and r.manifest.artifact_type == ENGINE_ARTIFACT]
        if not models and not engines:
            raise CorruptModel(where, "the bundle holds no model (no manifest carries org.model-provisioner.source-id)")
        for manifest in models:
            signed = [
                r.manifest.layers[0].digest
                for r in read
                if r.subject == manifest.digest and r.manifest.artifact_type == SIGSTORE_BUNDLE and r.manifest.layers
            ]
            signatures = [reader.read_small(d, MAX_BUNDLE_BYTES, where) for d in signed[-MAX_REFERRERS:]]
            for r in read:  # the BOMs travel for the far side's auditors; each must still be the bytes listed
                if r.subject == manifest.digest and r.manifest.artifact_type == BOM_MEDIA and r.manifest.layers:
                    reader.read_small(r.manifest.layers[0].digest, MAX_MANIFEST_BYTES, where)
            report.models.append(_import_model(prov, reader, manifest, signatures))
        for engine_manifest in engines[:1]:
            report.engine = import_engine(prov, reader, engine_manifest)
    return report


def _subject_of(raw: bytes) -> str | None:
    """The manifest's ``subject`` digest (parse_manifest already proved it is a JSON object)."""
    subject = json.loads(raw).get("subject")
    digest = subject.get("digest") if isinstance(subject, dict) else None
    return digest if isinstance(digest, str) else None


def _import_model(
    prov: ModelProvisioner, reader: LayoutReader, manifest: Manifest, signatures: list[bytes]
) -> dict[str, Any]:
    model_id = manifest.annotations[ANN_SOURCE]
    ref = parse(model_id)
    if isinstance(ref, FileRef):
        raise CorruptModel(
            str(reader.source)[:200], f"{model_id[:200]!r} is a local path; a bundle carries pulled models"
        )
    prov.settings.policy.check_ref(ref)  # before any byte is stored
    recorded = manifest.annotations.get(ANN_DIGEST, "")
    if not recorded.startswith("sha256:"):
        raise CorruptModel(model_id, f"its manifest in the bundle records no digest ({ANN_DIGEST}); not exported by us")
    digest = Digest.parse(recorded)
    files = []
    for path, layer, compression in layer_files(manifest, model_id):
        reader.import_blob(prov.store, prov.catalog, layer.digest, layer.size, f"{model_id} [{path}]")
        files.append(RemoteFile(path=path, sources=(), size=layer.size, sha256=layer.hex, unpack=compression))
    plan = FetchPlan(
        layout="auto",
        files=tuple(files),
        revision=manifest.annotations.get(ANN_REVISION) or manifest.digest.split(":", 1)[1][:12],
        metadata={"source": model_id, "bundle": str(reader.source)},
        annotations=dict(manifest.annotations),
        signatures=tuple(signatures),
    )
    resolved = ensure_flow.ensure(prov.workspace, ref, digest, True, FetchOptions(planned=plan))
    return {
        "id": resolved.id,
        "digest": resolved.digest,
        "local_path": str(resolved.local_path),
        "from_cache": resolved.from_cache,
        "signature": resolved.metadata.get("signature"),
    }
