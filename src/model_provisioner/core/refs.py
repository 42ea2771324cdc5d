"""Model references: typed, frozen, self-validating, with a canonical id.

``parse(text).id`` is a pure function of the text (and, for relative local paths, the working
directory); ``parse(ref.id).id == ref.id`` for every ref. Secrets (URL credentials, query strings such
as pre-signed signatures) are kept on the ref for fetching but never enter ``id``, ``repr`` or
equality.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from urllib.parse import unquote, urlsplit

from model_provisioner.core.errors import InvalidModelRef
from model_provisioner.core.reftypes import (
    SUPPORTED_FORMS,
    FileRef,
    HfRef,
    ModelRef,
    OciRef,
    S3Ref,
    UrlRef,
)

__all__ = [
    "FileRef",
    "HfRef",
    "ModelRef",
    "OciRef",
    "S3Ref",
    "UrlRef",
    "parse",
]

# --------------------------------------------------------------------------------------------- parsing


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

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
    hub = _hub_host_form(text)
    if hub is not None:
        return _parse_remote(original, hub, "hf")
    match = _SCHEME_RE.match(text)
    if match is None or text.startswith(("./", "../", "/", "~")):
        return _parse_local(original, text, cwd)
    scheme = match.group(1).lower()
    if scheme not in ("file", "local"):
        return _parse_remote(original, text, scheme)  # a pure function of the text: memoized
    return _parse_scheme(original, text, scheme, cwd)


#: the Hub's host names as ollama, ramalama and docker model let people write them (docs/refs-and-sources.md)
_HUB_HOSTS = ("hf.co/", "huggingface.co/", "www.huggingface.co/")
_HUB_FILE_RE = re.compile(r"^([^/]+)/([^/]+)/(?:resolve|blob)/([^/]+)/(.+)$")


def _hub_host_form(text: str) -> str | None:
    """``hf.co/org/repo[:QUANT]``, ``huggingface.co/org/repo[/FILE]`` and a file page
    (``huggingface.co/org/repo/blob/REV/FILE``) as the ``hf:`` ref they mean; None for anything else (a local
    file of that name is written ``./hf.co/…``)."""
    lowered = text.lower()
    host = next((h for h in _HUB_HOSTS if lowered.startswith(h)), None)
    if host is None:
        return None
    rest = text[len(host) :]
    page = _HUB_FILE_RE.match(rest)
    if page is not None:
        org, repo, revision, path = page.groups()
        return f"hf:{org}/{repo}@{revision}/{path}"
    return f"hf:{rest}"


def hub_hint(path: str, cwd: str | None = None) -> str:
    """For a local path that does not exist but reads like a Hub repo as typed (``org/repo``,
    ``org/repo:Q4_K_M``): the ``hf:`` ref to write instead, as a message's tail; else ''."""
    try:
        typed = os.path.relpath(path, cwd or os.getcwd())
    except ValueError:
        return ""
    if re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", typed) is None or typed.startswith("."):
        return ""
    return f"; for the Hugging Face repo {typed.split(':')[0]} write hf:{typed}"


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
