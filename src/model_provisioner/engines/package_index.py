"""Where the pinned llama-cpp-python sdist is: a lookup in a Python package index (PEP 691 JSON, else the
PEP 503 HTML page), through our HTTP client (the policy's host rules, the proxies of the settings). Only the
file's URL comes from the index: its bytes are fetched by the verified transfer against the sha256 pinned in
the code, so a lying index or mirror can only fail the install, never change what is built."""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import InvalidInput, NotFound, TransferFailed, quote
from model_provisioner.core.redact import redact_url
from model_provisioner.net.http import host_checker, new_client, open_following, read_at_most

DEFAULT_INDEX = "https://pypi.org/simple"
_JSON = "application/vnd.pypi.simple.v1+json"
_ANCHOR = re.compile(r"<a\s[^>]*?href\s*=\s*[\"']([^\"']+)[\"'][^>]*>([^<]+)</a>", re.IGNORECASE)
_MAX_PAGE = 8 << 20


@dataclass(frozen=True)
class PinnedSdist:
    project: str
    filename: str
    sha256: str
    #: the llama.cpp tree inside it
    subdir: str


#: llama.cpp as vendored in llama-cpp-python 0.3.36 (its `llama-server --version`: build 1, commit 0c1e570)
LLAMACPP_SDIST = PinnedSdist(
    project="llama-cpp-python",
    filename="llama_cpp_python-0.3.36.tar.gz",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    subdir="vendor/llama.cpp",
)


def index_url(settings: Settings) -> str:
    """``engines.package_index``, else pip's ``PIP_INDEX_URL``, else PyPI."""
    return (settings.engines.package_index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def sdist_url(settings: Settings, pinned: PinnedSdist) -> str:
    """The URL of ``pinned.filename`` on the index's project page."""
    page = f"{index_url(settings)}/{pinned.project}/"
    shown = redact_url(page)
    client, _ = new_client(settings.transfer, settings.policy)
    try:
        response, final, _ = open_following(
            client,
            page,
            {"Accept": f"{_JSON}, text/html;q=0.1"},
            check_host=host_checker(settings.policy),
            allow_downgrade=settings.transfer.allow_https_downgrade,
            shown=shown,
        )
        try:
            if response.status_code != 200:
                raise NotFound(
                    f"package index page {quote(shown)} answered HTTP {response.status_code}; set "
                    "engines.package_index (or PIP_INDEX_URL) to an index that has "
                    f"{pinned.project}, or give --source and --digest"
                )
            body = read_at_most(response, _MAX_PAGE)
            kind = response.headers.get("content-type", "")
        finally:
            response.close()
    except OSError as exc:
        raise TransferFailed(f"package index {quote(shown)}: {exc}") from None
    finally:
        client.close()
    for name, url in _files(body, kind, final):
        if name == pinned.filename:
            if urlsplit(url).scheme not in ("https", "http"):
                raise InvalidInput(
                    f"package index page {quote(shown)} points {pinned.filename} at {quote(redact_url(url)[:200])}; "
                    "only http(s) URLs are followed from an index"
                )
            return url
    raise NotFound(
        f"{pinned.filename} is not on the package index page {quote(shown)}; set engines.package_index to an "
        "index that has it, or give --source and --digest"
    )


def _files(body: bytes, content_type: str, base: str) -> list[tuple[str, str]]:
    text = body.decode("utf-8", "replace")
    if content_type.startswith(_JSON):
        try:
            files = json.loads(text).get("files", [])
        except (ValueError, AttributeError):
            return []
        return [
            (str(f["filename"]), urljoin(base, str(f["url"])))
            for f in files
            if isinstance(f, dict) and "filename" in f and "url" in f
        ]
    return [
        (html.unescape(name).strip(), urljoin(base, html.unescape(href).split("#", 1)[0]))
        for href, name in _ANCHOR.findall(text)
    ]
