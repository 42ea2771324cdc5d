"""The typed model references: one frozen, self-validating class per scheme, each with a canonical ``id``
(``refs.parse`` builds them from text). Secrets (URL credentials, query strings such as pre-signed signatures)
are kept on the ref for fetching but never enter ``id``, ``repr`` or equality."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import InvalidDigest, InvalidModelRef

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Hugging Face repo names: alphanumerics, '.', '_', '-'; no leading/trailing '.'/'-'; no '--'/'..'
_HF_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_HF_REV_RE = re.compile(r"[A-Za-z0-9._/-]{1,256}")
_QUANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_S3_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_OCI_HOST_RE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?")
_OCI_REPO_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_OCI_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")

SUPPORTED_FORMS = (
    "./m.gguf, /abs/m.gguf, ~/m.gguf, file:/abs/m.gguf, hf:org/repo[@rev][/file.gguf|:QUANT], "
    "https://host/path, s3://bucket/key, oci://registry/repo[:tag][@sha256:...]"
)


def _check_segments(original: str, path: str, what: str) -> None:
    """Refuse empty, '.', '..' segments, absolute paths, backslashes and control characters."""
    if not path:
        raise InvalidModelRef(original, f"{what} is empty")
    if _CONTROL_RE.search(path):
        raise InvalidModelRef(original, f"{what} contains control characters")
    if "\\" in path:
        raise InvalidModelRef(original, f"{what} contains a backslash; use '/' between path segments")
    if path.startswith("/"):
        raise InvalidModelRef(original, f"{what} must be relative (no leading '/')")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidModelRef(
                original, f"{what} {path!r} has an empty, '.' or '..' segment; name the file directly"
            )


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Base of every reference. Subclasses add their fields and ``id``."""

    scheme: ClassVar[str] = ""

    @property
    def id(self) -> str:
        """The canonical id, computed once when the ref is made (refs are frozen)."""
        return self._id  # type: ignore[attr-defined,no-any-return]

    def _compute_id(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def display_name(self) -> str:
        """Last path-ish component, used for file names in views."""
        return self.id.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class FileRef(ModelRef):
    """A local file (or directory), registered in place. ``path`` is absolute and normalised."""

    path: str
    _id: str = field(default="", init=False, repr=False, compare=False)
    scheme: ClassVar[str] = "file"

    def __post_init__(self) -> None:
        if not self.path or _CONTROL_RE.search(self.path):
            raise InvalidModelRef(self.path, "a local path must be non-empty, without control characters")
        if not os.path.isabs(self.path):
            raise InvalidModelRef(self.path, "FileRef.path must be absolute; use parse() for relative paths")
        if os.path.normpath(self.path) != self.path or self.path.startswith("//"):
            raise InvalidModelRef(self.path, "FileRef.path must be normalised (no '.', '..' or '//')")

        object.__setattr__(self, "_id", self._compute_id())

    def _compute_id(self) -> str:
        return f"file:{self.path}"

    @property
    def local_path(self) -> Path:
        return Path(self.path)


@dataclass(frozen=True, slots=True)
class HfRef(ModelRef):
    """``hf:org/repo[@revision][/path]`` or ``hf:org/repo[@revision]:QUANT``."""

    repo_id: str
    revision: str | None = None
    path: str | None = None
    quant: str | None = None
    _id: str = field(default="", init=False, repr=False, compare=False)
    scheme: ClassVar[str] = "hf"

    def __post_init__(self) -> None:
        original = self.repo_id
        parts = self.repo_id.split("/")
        if len(parts) != 2 or not all(_HF_NAME_RE.fullmatch(p) and ".." not in p and "--" not in p for p in parts):
            raise InvalidModelRef(
                original,
                "expected a Hub repo id ORG/NAME (letters, digits, '.', '_', '-'; "
                "no leading/trailing '.' or '-'; at most 96 characters each)",
            )
        if self.revision is not None:
            rev = self.revision
            if not _HF_REV_RE.fullmatch(rev) or ".." in rev or rev.startswith("/") or rev.endswith("/") or "//" in rev:
                raise InvalidModelRef(
                    rev, "revision must be a branch, tag or commit (letters, digits, '.', '_', '-', '/')"
                )
            if rev == "main":
                object.__setattr__(self, "revision", None)
        if self.path is not None and self.quant is not None:
            raise InvalidModelRef(self.path, "give either a file path or a :QUANT, not both")
        if self.path is not None:
            _check_segments(self.path, self.path, "file path in the repo")
        if self.quant is not None:
            if not _QUANT_RE.fullmatch(self.quant):
                raise InvalidModelRef(self.quant, "quantization must look like Q4_K_M, Q8_0, IQ2_XXS, F16")
            object.__setattr__(self, "quant", self.quant.upper())

        object.__setattr__(self, "_id", self._compute_id())

    def _compute_id(self) -> str:
        out = f"hf:{self.repo_id}"
        if self.revision is not None:
            out += "@" + quote(self.revision, safe="")
        if self.quant is not None:
            out += ":" + self.quant
        elif self.path is not None:
            out += "/" + self.path
        return out

    @property
    def revision_or_default(self) -> str:
        return self.revision or "main"

    @property
    def is_repo(self) -> bool:
        """True for a whole repo (vLLM/TGI), False for one file or a quant selection."""
        return self.path is None and self.quant is None


@dataclass(frozen=True, slots=True)
class UrlRef(ModelRef):
    """``https://host[:port]/path``. ``http://`` parses too (policy decides whether it may be used).

    ``query`` and ``userinfo`` are secrets: they are used for fetching only.
    """

    url_scheme: str
    host: str
    port: int | None
    path: str
    query: str = field(default="", repr=False, compare=False)
    userinfo: str = field(default="", repr=False, compare=False)
    _id: str = field(default="", init=False, repr=False, compare=False)
    scheme: ClassVar[str] = "https"

    def __post_init__(self) -> None:
        if self.url_scheme not in ("https", "http"):
            raise InvalidModelRef(self.url_scheme, "URL refs must use https:// (or http://)")
        if not _HOST_RE.fullmatch(self.host):
            raise InvalidModelRef(self.host, "URL host must be a lower-case host name or IP address")
        if self.port is not None and not 0 < self.port < 65536:
            raise InvalidModelRef(str(self.port), "URL port must be between 1 and 65535")
        if self.port == {"https": 443, "http": 80}[self.url_scheme]:
            object.__setattr__(self, "port", None)  # canonical: the default port is implied
        if not self.path.startswith("/") or self.path.endswith("/"):
            raise InvalidModelRef(self.path, "URL path must name a file (e.g. /models/m.gguf)")
        _check_segments(self.path, self.path[1:], "URL path")

        object.__setattr__(self, "_id", self._compute_id())

    @property
    def netloc(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def _compute_id(self) -> str:
        return f"{self.url_scheme}://{self.netloc}{self.path}"

    @property
    def fetch_url(self) -> str:
        """The URL to request, including the secret query string (never log this)."""
        return self.id + (f"?{self.query}" if self.query else "")


@dataclass(frozen=True, slots=True)
class S3Ref(ModelRef):
    """``s3://bucket/key`` (one object) or ``s3://bucket/prefix/`` (a directory)."""

    bucket: str
    key: str
    _id: str = field(default="", init=False, repr=False, compare=False)
    scheme: ClassVar[str] = "s3"

    def __post_init__(self) -> None:
        if not _S3_BUCKET_RE.fullmatch(self.bucket) or ".." in self.bucket:
            raise InvalidModelRef(
                self.bucket, "S3 bucket names are 3-63 characters of lower-case letters, digits, '.', '-'"
            )
        if self.key:
            _check_segments(self.key, self.key.rstrip("/"), "S3 key")

        object.__setattr__(self, "_id", self._compute_id())

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    def _compute_id(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class OciRef(ModelRef):
    """``oci://registry[:port]/repo[:tag][@sha256:HEX]``; with neither tag nor digest the tag is latest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    _id: str = field(default="", init=False, repr=False, compare=False)
    scheme: ClassVar[str] = "oci"

    def __post_init__(self) -> None:
        if not _OCI_HOST_RE.fullmatch(self.registry) or not (
            "." in self.registry or ":" in self.registry or self.registry == "localhost"
        ):
            raise InvalidModelRef(
                self.registry,
                "OCI refs need an explicit registry host, e.g. oci://ghcr.io/org/model:tag",
            )
        components = self.repository.split("/")
        if not all(_OCI_REPO_COMPONENT_RE.fullmatch(c) for c in components):
            raise InvalidModelRef(
                self.repository,
                "OCI repository names are lower-case components [a-z0-9] joined by '.', '_', '-' and '/'",
            )
        if self.tag is not None and not _OCI_TAG_RE.fullmatch(self.tag):
            raise InvalidModelRef(self.tag, "OCI tags are up to 128 characters of [A-Za-z0-9_.-]")
        if self.digest is not None:
            try:
                Digest.parse(self.digest)
            except InvalidDigest as exc:
                raise InvalidModelRef(self.digest, exc.problem) from None
        if self.tag is None and self.digest is None:
            object.__setattr__(self, "tag", "latest")

        object.__setattr__(self, "_id", self._compute_id())

    @property
    def reference(self) -> str:
        """What to put in ``/v2/<name>/manifests/<reference>``: the digest when pinned."""
        return self.digest or self.tag or "latest"

    def _compute_id(self) -> str:
        out = f"oci://{self.registry}/{self.repository}"
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out
