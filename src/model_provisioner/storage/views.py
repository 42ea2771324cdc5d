"""Where a model's engine view lives inside the cache: ``gguf/<namespace>/<file>@<blob>`` for one file,
``transformers|triton|gguf/<namespace>@<revision>/`` for a tree (docs/cache-and-lifecycle.md)."""

from __future__ import annotations

import os
import re

from model_provisioner.core.refs import HfRef, ModelRef, OciRef, S3Ref, UrlRef

_BLOB_SUFFIX = re.compile(r"@[0-9a-f]{64}$")


def view_name(file_name: str, fmt: str) -> str:
    """Legacy ``.bin``/``.ggml`` files with GGUF magic are viewed as ``.gguf``."""
    if fmt == "gguf" and not file_name.lower().endswith(".gguf"):
        stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
        return stem + ".gguf"
    return file_name


def ref_namespace(ref: ModelRef) -> str:
    """Directory of a ref's view, e.g. ``org/repo`` for hf, ``host/dir`` for https."""
    if isinstance(ref, HfRef):
        return ref.repo_id
    if isinstance(ref, UrlRef):
        parent = ref.path.rsplit("/", 1)[0].strip("/")
        return ref.host.replace(":", "_") + (f"/{parent}" if parent else "")
    if isinstance(ref, S3Ref):
        key = ref.key.rstrip("/")
        parent = key if ref.is_prefix else (key.rsplit("/", 1)[0] if "/" in key else "")
        return ref.bucket + (f"/{parent}" if parent else "")
    if isinstance(ref, OciRef):
        return f"{ref.registry.replace(':', '_')}/{ref.repository}"
    return "local"


def ref_file_name(ref: ModelRef, fallback: str) -> str:
    """The file name a one-file model is viewed under: the ref's own name when it has one."""
    if isinstance(ref, HfRef) and ref.path:
        return ref.path.rsplit("/", 1)[-1]
    if isinstance(ref, UrlRef | S3Ref):
        name = ref.display_name
        return name or fallback
    return fallback


def view_source_name(view: str | os.PathLike[str]) -> str:
    """The file name a one-file view was made from: ``<file>@<blob>`` without its ``@<blob>``."""
    name = os.path.basename(view)
    return _BLOB_SUFFIX.sub("", name)


def blob_view(ref: ModelRef, source_name: str, blob: str, fmt: str) -> str:
    """The view of a one-file model, relative to the cache root."""
    file_name = view_name(ref_file_name(ref, source_name), fmt)
    top = "gguf" if fmt == "gguf" else "files"
    return f"{top}/{ref_namespace(ref)}/{file_name}@{blob}"
