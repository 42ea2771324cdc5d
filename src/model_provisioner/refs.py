"""Model references: typed, frozen, self-validating, with a canonical id.

``parse(text).id`` is a pure function of the text (and, for relative local paths, the working
directory); ``parse(ref.id).id == ref.id`` for every ref. Secrets (URL credentials, query strings such
as pre-signed signatures) are kept on the ref for fetching but never enter ``id``, ``repr`` or
equality.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, unquote, urlsplit

from .digest import Digest
from .errors import InvalidDigest, InvalidModelRef

__all__ = [
    "FileRef",
    "HfRef",
    "ModelRef",
    "OciRef",
    "S3Ref",
    "UrlRef",
    "parse",
]

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
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


# --------------------------------------------------------------------------------------------- parsing


#: no reference is longer (pre-signed URLs are about 2,000 characters)
MAX_REF_CHARS = 16384


def parse(text: str | os.PathLike[str] | ModelRef, *, cwd: str | os.PathLike[str] | None = None) -> ModelRef:
    """Parse any supported reference form into a typed :class:`ModelRef`.

    A ``pathlib.Path`` (any ``os.PathLike``) is a local file. Raises :class:`InvalidModelRef`
    (a ``ValueError``) whose message quotes the input.
    """
    if isinstance(text, ModelRef):
        return text
    if isinstance(text, os.PathLike):
        path = os.fspath(text)
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidModelRef(repr(text), "a local path must be a non-empty text path")
        return _parse_local(path, path, cwd)
    if not isinstance(text, str):
        raise InvalidModelRef(repr(text), "a model reference must be a string")
    original = text
    text = text.lstrip()
    if not text.lower().startswith("file:"):
        text = text.rstrip()  # a canonical file: id is taken as it is (a path may end with a space)
    if len(text) > MAX_REF_CHARS:
        raise InvalidModelRef(original, f"longer than {MAX_REF_CHARS} characters; no model reference is that long")
    if not text:
        raise InvalidModelRef(original, f"empty reference; use one of: {SUPPORTED_FORMS}")
    if "\x00" in text:
        raise InvalidModelRef(original, "contains a NUL byte")
    match = _SCHEME_RE.match(text)
    if match is None or text.startswith(("./", "../", "/", "~")):
        return _parse_local(original, text, cwd)
    scheme = match.group(1).lower()
    if scheme not in ("file", "local"):
        return _parse_remote(original, text, scheme)  # a pure function of the text: memoized
    return _parse_scheme(original, text, scheme, cwd)


@functools.lru_cache(maxsize=4096)
def _parse_remote(original: str, text: str, scheme: str) -> ModelRef:
    return _parse_scheme(original, text, scheme, None)


def _parse_scheme(original: str, text: str, scheme: str, cwd: str | os.PathLike[str] | None) -> ModelRef:
    rest = text[len(scheme) + 1 :]  # the scheme and its colon
    try:
        if scheme in ("file", "local"):
            return _parse_file_uri(original, rest, cwd)
        if scheme == "hf":
            return _parse_hf(original, rest)
        if scheme in ("https", "http"):
            return _parse_url(original, text)
        if scheme == "s3":
            return _parse_s3(original, rest)
        if scheme == "oci":
            return _parse_oci(original, rest)
    except InvalidModelRef as exc:
        if exc.ref == original:
            raise
        raise InvalidModelRef(original, exc.problem) from None
    hint = "" if "://" in text else f" (a local file whose name contains ':' can be written ./{text})"
    raise InvalidModelRef(original, f"unsupported scheme {scheme!r}; supported forms: {SUPPORTED_FORMS}{hint}")


def _parse_local(original: str, text: str, cwd: str | os.PathLike[str] | None) -> FileRef:
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):
        raise InvalidModelRef(original, "cannot expand '~': unknown user or HOME not set")
    base = os.fspath(cwd) if cwd is not None else os.getcwd()
    absolute = os.path.join(base, expanded)
    for _ in range(3):
        try:
            return FileRef(os.path.realpath(absolute))
        except OSError:
            continue  # a link replaced while it was being resolved (readlink found a file): resolve again
    raise InvalidModelRef(original, "the path keeps changing while it is being resolved (a link being replaced)")


def _parse_file_uri(original: str, rest: str, cwd: str | os.PathLike[str] | None) -> FileRef:
    if rest.startswith("//"):
        authority, _, path = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise InvalidModelRef(original, f"file URIs cannot name another host ({authority!r})")
        return _parse_local(original, "/" + unquote(path), cwd)
    if not rest:
        raise InvalidModelRef(original, "file: needs a path, e.g. file:/abs/model.gguf")
    return _parse_local(original, rest, cwd)


def _parse_hf(original: str, rest: str) -> HfRef:
    body = rest[2:] if rest.startswith("//") else rest
    if "?" in body or "#" in body:
        raise InvalidModelRef(original, "hf: refs take no query string or fragment")
    parts = body.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InvalidModelRef(original, "expected hf:ORG/REPO[@REV][/FILE] or hf:ORG/REPO[@REV]:QUANT")
    org, name_part, path_parts = parts[0], parts[1], parts[2:]
    quant: str | None = None
    if ":" in name_part:
        name_part, quant = name_part.split(":", 1)
        if path_parts:
            raise InvalidModelRef(original, "a :QUANT selector cannot be followed by a file path")
    revision: str | None = None
    if "@" in name_part:
        name_part, revision = name_part.split("@", 1)
        revision = unquote(revision)
        if not revision:
            raise InvalidModelRef(original, "empty revision after '@'")
    if quant is not None and not quant:
        raise InvalidModelRef(original, "empty quantization after ':'")
    path = "/".join(path_parts) if path_parts else None
    if path == "":
        path = None  # "hf:org/repo/" is the whole repo
    return HfRef(f"{org}/{name_part}", revision=revision, path=path, quant=quant)


_DNS_LABEL_RE = re.compile(r"[\w-]+")  # letters (IDN too), digits, "_" and "-"


def host_problem(host: str) -> str | None:
    """What is wrong with a URL's host name, or None: an address written in digits must be a plain dotted
    quad (``0177.0.0.1``, ``256.1.1.1`` and ``2130706433`` are refused, not guessed at), and a name is
    labels of 1-63 letters, digits, ``-`` or ``_``, 253 characters at most."""
    import ipaddress

    if ":" in host:  # an IPv6 literal (urlsplit removed the brackets)
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return f"the host {host[:80]!r} is not a valid IPv6 address"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return (
                f"the host {host[:80]!r} is not a valid IPv4 address; write it as four decimal numbers 0-255 "
                "without leading zeros (e.g. 10.0.0.7)"
            )
        return None
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253:
        return f"the host name is {len(name)} characters long; the most DNS allows is 253"
    for label in name.split("."):
        if not label:
            return f"the host {host[:80]!r} has an empty label (two dots in a row, or a leading dot)"
        if len(label) > 63:
            return f"the host {host[:80]!r} has a label of {len(label)} characters; the most DNS allows is 63"
        if not _DNS_LABEL_RE.fullmatch(label):
            return f"the host {host[:80]!r} has a label with characters a host name cannot hold"
    return None


def _parse_url(original: str, text: str) -> UrlRef:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidModelRef(original, f"not a valid URL ({exc})") from None
    host = parts.hostname or ""
    if not host:
        raise InvalidModelRef(original, "URL has no host")
    problem = host_problem(host)
    if problem is not None:
        raise InvalidModelRef(original, problem)
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
    return UrlRef(
        parts.scheme.lower(),
        host.lower(),
        port,
        parts.path or "/",
        query=parts.query,
        userinfo=unquote(userinfo),
    )


def _parse_s3(original: str, rest: str) -> S3Ref:
    if not rest.startswith("//"):
        raise InvalidModelRef(original, "expected s3://bucket/key or s3://bucket/prefix/")
    body = rest[2:]
    if "?" in body or "#" in body:
        raise InvalidModelRef(original, "s3:// refs take no query string or fragment")
    bucket, sep, key = body.partition("/")
    if "@" in bucket:
        raise InvalidModelRef(
            original, "credentials do not belong in the ref; use the AWS credential chain or settings"
        )
    if not sep and not key:
        key = ""
    return S3Ref(bucket, key)


def _parse_oci(original: str, rest: str) -> OciRef:
    if not rest.startswith("//"):
        raise InvalidModelRef(original, "expected oci://registry/repo[:tag][@sha256:...]")
    body = rest[2:]
    if "?" in body or "#" in body:
        raise InvalidModelRef(original, "oci:// refs take no query string or fragment")
    digest: str | None = None
    if "@" in body:
        body, digest = body.rsplit("@", 1)
        if ":" not in digest:
            raise InvalidModelRef(
                original, "credentials do not belong in the ref; use ~/.docker/config.json or settings"
            )
    registry, sep, repo_part = body.partition("/")
    if not sep or not repo_part:
        raise InvalidModelRef(original, "expected oci://registry/repo[:tag][@sha256:...]")
    tag: str | None = None
    last = repo_part.rsplit("/", 1)[-1]
    if ":" in last:
        repo_part, tag = repo_part.rsplit(":", 1)
        if not tag:
            raise InvalidModelRef(original, "empty tag after ':'")
    return OciRef(registry.lower(), repo_part, tag=tag, digest=digest)
