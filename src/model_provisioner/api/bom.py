"""An AI-BOM of a provisioned model: a CycloneDX ML-BOM (the ``bom`` extra: cyclonedx-python-lib) with what this
tool knows and proved about it (docs/verification.md, "AI-BOM").

The model is the BOM's subject (``machine-learning-model``): its digest as a SHA-256 hash, its source (redacted
as every id is) and revision, its format facts (architecture, quantization, context), the verification (outcome,
expected digest, when), the signature result when one was checked, and the safety lint's verdict. Each file is a
``file`` component with its own SHA-256 and size. The JSON is validated against the CycloneDX schema before it is
written (a BOM that does not validate is a bug, never a file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.core.errors import NotFound
from model_provisioner.core.extras import require_extra
from model_provisioner.core.version import VERSION
from model_provisioner.engines.safety import lint_file
from model_provisioner.storage.catalog import CatalogEntry, EntryFile

#: the metadata facts a BOM carries, as ``model-provisioner:<key>`` properties
FACTS = ("architecture", "quantization", "ctx_max", "file_type", "name", "revision", "format", "signature")


def model_bom(entry: CatalogEntry, files: list[EntryFile], lint: dict[str, Any] | None) -> str:
    """The BOM as CycloneDX 1.6 JSON text, validated."""
    require_extra("bom", "an AI-BOM (inspect --bom)")
    from cyclonedx.model import HashAlgorithm, HashType, Property  # noqa: PLC0415  # heavy: cyclonedx, for --bom only
    from cyclonedx.model.bom import Bom  # noqa: PLC0415  # heavy: as above
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415  # heavy: as above
    from cyclonedx.output.json import JsonV1Dot6  # noqa: PLC0415  # heavy: as above
    from cyclonedx.schema import SchemaVersion  # noqa: PLC0415  # heavy: as above
    from cyclonedx.validation.json import JsonStrictValidator  # noqa: PLC0415  # heavy: as above

    def sha256(hex_: str) -> list[Any]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=hex_)]

    properties = [Property(name="model-provisioner:id", value=entry.id)]
    properties.append(Property(name="model-provisioner:source", value=entry.ref))
    properties.append(Property(name="model-provisioner:lifecycle", value=str(entry.lifecycle)))
    properties.append(Property(name="model-provisioner:verification", value=str(entry.verification or "none")))
    if entry.expected_digest:
        properties.append(Property(name="model-provisioner:expected-digest", value=entry.expected_digest))
    for key in FACTS:
        value = entry.metadata.get(key)
        if value is not None and not isinstance(value, (dict, list)):
            properties.append(Property(name=f"model-provisioner:{key.replace('_', '-')}", value=str(value)))
    if lint is not None:
        verdict = "ok" if lint.get("ok") else "refused: " + "; ".join(lint.get("problems", []))
        properties.append(Property(name="model-provisioner:safety-lint", value=verdict[:1000]))
    digest_hex = entry.digest.split(":", 1)[1] if entry.digest and ":" in entry.digest else None
    model = Component(
        name=entry.id,
        type=ComponentType.MACHINE_LEARNING_MODEL,
        version=digest_hex[:12] if digest_hex else None,
        hashes=sha256(digest_hex) if digest_hex and len(files) <= 1 else None,
        properties=properties,
        bom_ref=f"model:{entry.id}",
        components=[
            Component(
                name=f.path,
                type=ComponentType.FILE,
                hashes=sha256(f.blob),
                properties=[Property(name="model-provisioner:size-bytes", value=str(f.size_bytes))],
                bom_ref=f"file:{entry.id}:{f.path}",
            )
            for f in files
        ],
    )
    bom = Bom()
    bom.metadata.component = model
    bom.metadata.tools.components.add(
        Component(name="model-provisioner", type=ComponentType.APPLICATION, version=VERSION)
    )
    text: str = JsonV1Dot6(bom).output_as_string(indent=2)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise RuntimeError(f"the AI-BOM does not validate against CycloneDX 1.6: {error}")
    return text


def bom_of(prov: ModelProvisioner, entry: CatalogEntry) -> str:
    """The BOM of a catalog entry (its files, and the lint's verdict for a GGUF file)."""
    lint = None
    if entry.format == "gguf" and entry.local_path and os.path.isfile(entry.local_path):
        lint = lint_file(entry.local_path, entry.id).as_json()
    files = prov.catalog.files(entry.id)
    if not files and entry.digest and entry.local_path:  # a one-file model
        files = [EntryFile(os.path.basename(entry.local_path), entry.digest.split(":", 1)[-1], entry.size_bytes)]
    return model_bom(entry, files, lint)


def write_beside(prov: ModelProvisioner, model_id: str, handoff: Path) -> Path:
    """The BOM of ``model_id`` beside its engine handoff: ``<out>/.runtime/bom/<engine>.cdx.json`` for the
    handoff ``<out>/.runtime/engines/<engine>.json`` (``provision --bom``, ``up --bom``)."""
    entry = prov.entry(model_id)
    if entry is None:
        raise NotFound(f"{model_id} is not in the catalog; its BOM cannot be written")
    target = handoff.parent.parent / "bom" / f"{handoff.stem}.cdx.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(bom_of(prov, entry) + "\n", encoding="utf-8")
    return target
