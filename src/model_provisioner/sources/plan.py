"""Fetchers know a protocol and produce a plan; they never write into the cache (the store does)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model_provisioner.transfer.types import Source


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model: its path inside the model, where to get it, and what it must be."""

    path: str
    sources: tuple[Source, ...]
    size: int | None = None
    #: enforced while streaming: the source's own digest (HF LFS sha256, OCI descriptor) or a pinned one
    sha256: str | None = None
    #: git blob id of a small (non-LFS) Hub file, checked after download
    git_sha1: str | None = None
    #: "tar" / "gzip" / "zstd": an archive layer whose members become the model's files
    unpack: str | None = None


@dataclass(frozen=True)
class FetchPlan:
    #: "file" (one file), "gguf-split" (all parts of a split GGUF), "transformers" (a vLLM/TGI repo),
    #: "triton" (a Triton model repository) or "auto" (decided from the file names once fetched)
    layout: str
    files: tuple[RemoteFile, ...]
    revision: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: conditional request headers for a refresh of an https ref
    conditional: Mapping[str, str] = field(default_factory=dict)
    #: every file the source has (to tell "missing from the repo" from "left out by a filter")
    available: tuple[str, ...] = ()
    #: what the source says about the whole set (OCI manifest annotations, a pushed S3 manifest)
    annotations: dict[str, str] = field(default_factory=dict)
    #: signatures published beside the files (OCI referrers, an S3 mirror's signature), read when the
    #: signature policy asks for them
    signatures: tuple[bytes, ...] = ()

    @property
    def total_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
