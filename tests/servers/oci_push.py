"""Push test artifacts to a registry with plain httpx (independent of the client under test)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any

import httpx


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(base: str, repo: str, data: bytes, auth: Any = None) -> dict[str, Any]:
    started = httpx.post(f"{base}/v2/{repo}/blobs/uploads/", auth=auth)
    assert started.status_code == 202, started.text
    location = httpx.URL(base).join(started.headers["Location"])
    done = httpx.put(
        location.copy_merge_params({"digest": sha(data)}),
        content=data,
        auth=auth,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return {"digest": sha(data), "size": len(data)}


def push_artifact(
    base: str,
    repo: str,
    tag: str,
    layers: list[tuple[bytes, str, dict[str, str]]],
    *,
    config: tuple[bytes, str] = (b"{}", "application/vnd.oci.empty.v1+json"),
    annotations: dict[str, str] | None = None,
    artifact_type: str | None = None,
    auth: Any = None,
    media_type: str = "application/vnd.oci.image.manifest.v1+json",
) -> str:
    """Upload the blobs and put the manifest; returns the manifest digest."""
    config_desc = {"mediaType": config[1], **upload(base, repo, config[0], auth)}
    layer_descs = []
    for data, layer_type, layer_annotations in layers:
        desc: dict[str, Any] = {"mediaType": layer_type, **upload(base, repo, data, auth)}
        if layer_annotations:
            desc["annotations"] = layer_annotations
        layer_descs.append(desc)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config_desc,
        "layers": layer_descs,
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if annotations:
        manifest["annotations"] = annotations
    raw = json.dumps(manifest).encode()
    response = httpx.put(
        f"{base}/v2/{repo}/manifests/{tag}", content=raw, auth=auth, headers={"Content-Type": media_type}
    )
    assert response.status_code == 201, response.text
    return sha(raw)


def tar_bytes(
    files: dict[str, bytes],
    *,
    compression: str = "tar",
    links: dict[str, tuple[str, bool]] | None = None,
    raw_names: bool = False,
) -> bytes:
    """A tar (optionally gzip/zstd) of ``files``; ``links`` maps name -> (target, symbolic)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (target, symbolic) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE if symbolic else tarfile.LNKTYPE
            info.linkname = target
            tar.addfile(info)
    data = buf.getvalue()
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data
