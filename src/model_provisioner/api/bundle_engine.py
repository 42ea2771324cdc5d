"""The engine in a bundle (``export --engine``): the installed llama-server as the artifact ``engines push``
writes (``engines/artifacts.py``), installed on import from the bundle's verified blobs, no compiler and no
network on the far side (docs/fleet.md, "Air-gapped bundles")."""

from __future__ import annotations

from typing import Any

from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.core.errors import CorruptModel, NotFound
from model_provisioner.engines.artifacts import (
    BINARY_LAYER,
    RECORD_LAYER,
    engine_manifest,
    install_built,
    parse_engine_record,
)
from model_provisioner.engines.binaries import built
from model_provisioner.engines.install import record_installed
from model_provisioner.engines.installed import InstalledEngine, installed
from model_provisioner.net.registry.manifests import Manifest
from model_provisioner.ops.oci_layout import LayoutReader, LayoutWriter
from model_provisioner.ops.push import MANIFEST_MEDIA
from model_provisioner.sources.oci import ENGINE_ARTIFACT

REF_NAME = "org.opencontainers.image.ref.name"


def check_engine_exportable(prov: ModelProvisioner) -> InstalledEngine:
    """The engine ``up`` would run (the newest installed llama-server), its bytes still as recorded."""
    for engine in installed(prov, "llamacpp"):
        identity = built(engine.home, engine.record.target)
        if identity is not None and identity.sha256 == engine.record.binary_sha256:
            return engine
    raise NotFound(
        "export --engine carries the installed llama-server and none is installed (or its bytes changed): "
        "run `model-provisioner engines install llamacpp` first"
    )


def add_engine(writer: LayoutWriter, engine: InstalledEngine) -> dict[str, Any]:
    """Write the engine's artifact into the layout; returns its ``index.json`` descriptor."""
    r = engine.record
    writer.add_file(engine.binary, r.binary_sha256, r.size_bytes, f"engine {r.key[:12]}")
    record_bytes, raw = engine_manifest(engine)
    writer.add_bytes(record_bytes)
    writer.add_bytes(b"{}")
    return {
        "mediaType": MANIFEST_MEDIA,
        "digest": writer.add_bytes(raw),
        "size": len(raw),
        "artifactType": ENGINE_ARTIFACT,
        "annotations": {REF_NAME: f"engine-{r.kind}-{r.key[:12]}"},
    }


def import_engine(prov: ModelProvisioner, reader: LayoutReader, manifest: Manifest) -> str:
    """Install the engine the bundle carries; returns its key."""
    where = f"{str(reader.source)[:200]}: engine {manifest.digest}"
    record_layer = next((layer for layer in manifest.layers if layer.media_type == RECORD_LAYER), None)
    binary_layer = next((layer for layer in manifest.layers if layer.media_type == BINARY_LAYER), None)
    if record_layer is None or binary_layer is None:
        raise CorruptModel(where, "an engine artifact needs its binary and engine.json layers")
    record = parse_engine_record(reader.read_small(record_layer.digest, 1 << 16, where), where)
    if binary_layer.hex != record["binary_sha256"]:
        raise CorruptModel(where, "the binary layer is not the binary engine.json records")
    imported = reader.import_blob(prov.store, prov.catalog, binary_layer.digest, binary_layer.size, where)
    origin = f"bundle {str(reader.source)[:200]}@{manifest.digest}"
    try:
        identity = install_built(prov, record, prov.store.blob_path(binary_layer.hex), origin, where)
    finally:
        if imported and prov.catalog.blob_refcount(binary_layer.hex) == 0:
            prov.store.remove_blob(binary_layer.hex)  # installed as a copy; the blob is no model's
    return record_installed(prov, "llamacpp", identity, origin).record.key
