"""Adopting what huggingface_hub or Ollama already downloaded: each blob hashed, linked into our store and
registered under the ref it came from (docs/cache-and-lifecycle.md)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from model_provisioner.core.errors import ProvisionerError
from model_provisioner.ops.cache import Cache

log = logging.getLogger("model_provisioner")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")


@dataclass
class ImportReport:
    adopted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def import_hf_cache(prov: Cache, hub_cache: Path, report: ImportReport) -> None:
    """huggingface_hub's cache: ``models--ORG--NAME/snapshots/<commit>/<path>`` -> ``blobs/<etag>``. LFS
    blobs (etag = sha256) are hashed, linked into our store and registered as ``hf:ORG/NAME@<commit>/<path>``."""
    for repo_dir in sorted(hub_cache.glob("models--*--*")):
        repo_id = "/".join(repo_dir.name.split("--", 2)[1:])
        branches = _branches(repo_dir)
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
                # the branch ids too, as huggingface_hub's offline mode answers them: refs/<branch> names this commit
                for branch in branches.get(snapshot.name, []):
                    at = "" if branch == "main" else f"@{quote(branch, safe='')}"
                    _adopt(prov, f"hf:{repo_id}{at}/{rel}", target, etag, report)


def _branches(repo_dir: Path) -> dict[str, list[str]]:
    """commit -> the branches (and tags) ``refs/`` points at it (a ref file holds the 40-hex commit)."""
    out: dict[str, list[str]] = {}
    refs = repo_dir / "refs"
    for ref_file in sorted(p for p in refs.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            commit = ref_file.read_text(encoding="ascii")[:80].strip()
        except (OSError, UnicodeDecodeError):
            continue
        if _HEX40.fullmatch(commit):
            out.setdefault(commit, []).append(ref_file.relative_to(refs).as_posix())
    return out


def import_ollama(prov: Cache, models_dir: Path, report: ImportReport) -> None:
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


def _adopt(prov: Cache, ref: str, source: Path, sha_hex: str, report: ImportReport) -> None:
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
