"""A small OCI distribution-spec client on httpx: auth, manifests, blob locations, and push.

Blob *downloads* go through the transfer engine; this client gives it the URLs (mirrors first: ``registry_mirrors``)
and the auth header. Manifests, the token exchange (``auth.py``) and uploads are here.

- Auth: anonymous first; on ``401`` the ``WWW-Authenticate`` challenge decides. ``Bearer realm=…`` gets a
  token from the realm (which may be on another host; the policy is checked first), with Basic credentials
  when we have them (an identity token is exchanged by OAuth2 POST instead); ``Basic`` sends them directly.
  Credentials come from the settings (``oci_credentials``) or from the Docker config: credential helpers,
  the credential store or ``auths`` (``dockercreds.py``), looked up only when a registry asks.
- Transport: ``https://`` except for loopback registries and hosts in ``oci_plain_http``.
- Manifests: OCI manifest and index, Docker v2 manifest and list. By digest they must hash to it; by tag
  they are pinned to the digest of their bytes (``Docker-Content-Digest``, when sent, must agree).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin, urlsplit

from model_provisioner.core.errors import (
    CorruptModel,
    DigestMismatch,
    NotFound,
    PolicyDenied,
    TransferFailed,
)
from model_provisioner.core.hosts import resolves_to_loopback
from model_provisioner.core.redact import redact_text, redact_url
from model_provisioner.net.http import REDIRECT_STATUSES, new_client, open_following, read_at_most
from model_provisioner.net.redirects import redirect_headers
from model_provisioner.net.registry.auth import answer_challenge
from model_provisioner.net.registry.dockercreds import RegistryLogin, docker_login
from model_provisioner.net.registry.manifests import (
    MANIFEST_ACCEPT,
    Descriptor,
    Manifest,
    choose_from_index,
    parse_manifest,
    read_manifest,
)
from model_provisioner.net.registry.mirror_reads import manifest_from_mirrors, read_from_mirrors
from model_provisioner.net.retry import Backoff, is_retryable_status, retry_after_of

if TYPE_CHECKING:
    import httpx

    from model_provisioner.config.settings import Settings

log = logging.getLogger("model_provisioner")

_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryClient:
    """One registry host. Thread-safe for reads; tokens are cached per scope."""

    def __init__(self, registry: str, settings: Settings, *, anonymous: bool = False) -> None:
        """``anonymous``: never send credentials (asks whether a repository is public)."""
        self.registry = registry
        self.settings = settings
        # loopback decided on the resolved address: ``127.attacker.example`` is a name like any other
        plain = registry in settings.oci_plain_http or resolves_to_loopback(registry)
        self.base = f"{'http' if plain else 'https'}://{registry}"
        self._login: RegistryLogin | None = None
        self._login_resolved = anonymous
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self._client: httpx.Client | None = None
        self.mirrors = settings.registry_mirrors.get(registry, ())

    @property
    def login(self) -> RegistryLogin | None:
        """The settings' ``oci_credentials``, else the Docker config (helpers, store, ``auths``); resolved on
        the first challenge only, so a warm or anonymous pull never runs a credential helper."""
        if not self._login_resolved:
            creds = self.settings.oci_credentials.get(self.registry)
            if creds:
                self._login = RegistryLogin(creds[0], creds[1], "the settings file (oci_credentials)")
            else:
                self._login = docker_login(self.registry)
            self._login_resolved = True
        return self._login

    @property
    def used_login(self) -> bool:
        """A challenge was answered with credentials (they may or may not have been needed)."""
        return self._login_resolved and self._login is not None

    # ----------------------------------------------------------------------------------- plumbing
    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client, _ = new_client(self.settings.transfer, self.settings.policy)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_host(self, url: str) -> None:
        parts = urlsplit(url)
        self.settings.policy.check_host(parts.scheme, parts.hostname or "", redact_url(url))

    def reauth(self, repository: str) -> dict[str, str]:
        """Fresh credentials for pulling ``repository`` (after a token expired): the challenge is answered
        again by asking for the registry's API root of that repository."""
        self._auth.pop(f"repository:{repository}:pull", None)
        response = self.request("GET", f"/v2/{repository}/tags/list", repository)
        response.close()
        return self.auth_header(repository)

    def auth_header(self, repository: str, actions: str = "pull") -> dict[str, str]:
        value = self._auth.get(f"repository:{repository}:{actions}")
        return {"Authorization": value} if value else {}

    def request(
        self,
        method: str,
        path_or_url: str,
        repository: str,
        *,
        actions: str = "pull",
        headers: dict[str, str] | None = None,
        content: Any = None,
        stream: bool = False,
        follow: bool = True,
    ) -> httpx.Response:
        """Send with auth; answer a 401 challenge once; retry transport errors, 429 and 5xx (bounded, with the
        backoff and ``Retry-After`` rule of ``net/retry.py``); follow redirects of GET and HEAD by hand
        (``net/http.py``: no registry credentials to another origin)."""
        import httpx  # noqa: PLC0415  # heavy: only oci:// refs and pushes get here

        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        scope = f"repository:{repository}:{actions}"
        attempts = max(1, self.settings.transfer.attempts)
        backoff = Backoff.of(self.settings.transfer)
        challenged = False
        attempt = 0
        while True:
            attempt += 1
            self._check_host(url)
            send_headers = {**(headers or {}), **self.auth_header(repository, actions)}
            try:
                request = self.client.build_request(method, url, headers=send_headers, content=content)
                response = self.client.send(request, stream=stream or (follow and method in ("GET", "HEAD")))
            except httpx.HTTPError as exc:
                if attempt >= attempts or content is not None:
                    why = redact_text(str(exc)) or type(exc).__name__
                    raise TransferFailed(f"{self.registry}: {method} {redact_url(url)} failed: {why}") from None
                backoff.sleep(attempt)
                continue
            status = response.status_code
            if status == 401 and not challenged:
                challenged = True
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                self._answer_challenge(challenge, scope)
                continue
            if status == 401 or status == 403:
                response.close()
                raise self._denied(method, repository, status)
            if is_retryable_status(status) and attempt < attempts and content is None:
                response.close()
                backoff.sleep(attempt, retry_after_of(response.headers))
                continue
            if follow and status in REDIRECT_STATUSES and "Location" in response.headers and method in ("GET", "HEAD"):
                response.close()
                target = urljoin(url, response.headers["Location"])
                allow = self.settings.transfer.allow_https_downgrade
                followed, _, _ = open_following(
                    self.client,
                    target,
                    redirect_headers(url, target, send_headers, allow),
                    check_host=self._check_host,
                    allow_downgrade=allow,
                    method=method,
                    shown=redact_url(url),
                )
                response = followed
            if not stream:
                response.read()
                response.close()
            return response

    def _denied(self, method: str, repository: str, status: int) -> PolicyDenied:
        login = self.login
        who = (
            f"the credentials from {login.source} were refused" if login else "it needs credentials and none were found"
        )
        return PolicyDenied(
            f"registry {self.registry} denied {method} for {repository} ({status}): {who}; add them to "
            f"~/.docker/config.json (docker login {self.registry}) or to oci_credentials in the settings"
        )

    def _answer_challenge(self, challenge: str, scope: str) -> None:
        self._auth.update(answer_challenge(self.client, self.registry, self.login, challenge, scope, self._check_host))

    # ---------------------------------------------------------------------------------- manifests
    def get_manifest(self, repository: str, reference: str, subject: str) -> tuple[bytes, str, str | None]:
        """(bytes, digest, media type), from the first mirror able to answer (``resolve`` for a tag, ``pull``
        for a digest), else from the registry. A digest reference must match the bytes."""

        capability = "pull" if reference.startswith("sha256:") else "resolve"
        urls = [
            (f"{m.url}/v2/{repository}/manifests/{reference}?ns={self.registry}", f"mirror {m.url}")
            for m in self.mirrors
            if m.can(capability)
        ]
        found = manifest_from_mirrors(self.client, urls, reference, subject, self._check_host, self.settings)
        if found is not None:
            return found
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            headers={"Accept": MANIFEST_ACCEPT},
            stream=True,
        )
        try:
            if response.status_code == 404:
                raise NotFound(
                    f"{subject}: registry {self.registry} has no manifest {reference!r} in {repository}; "
                    "check the tag or digest"
                )
            if response.status_code != 200:
                raise TransferFailed(
                    f"{subject}: registry {self.registry} answered {response.status_code} for the manifest"
                )
            return read_manifest(response, reference, subject, f"registry {self.registry}")
        finally:
            response.close()

    def mirror_blob_urls(self, repository: str, digest: str) -> list[tuple[str, str]]:
        """(url, label) of the mirrors that may serve blobs (``pull``), in order; the caller verifies every
        byte against ``digest`` and falls back to ``blob_url``."""
        return [
            (f"{m.url}/v2/{repository}/blobs/{digest}?ns={self.registry}", f"mirror {m.url}")
            for m in self.mirrors
            if m.can("pull")
        ]

    def resolve(self, repository: str, reference: str, subject: str) -> Manifest:
        """Fetch and parse a manifest; an index resolves to its first image manifest."""
        raw, digest, media_type = self.get_manifest(repository, reference, subject)
        parsed = parse_manifest(raw, digest, media_type, subject)
        if isinstance(parsed, Manifest):
            return parsed
        chosen = choose_from_index(parsed)
        log.info("%s: index %s -> manifest %s", subject, digest, chosen.digest)
        raw, digest, media_type = self.get_manifest(repository, chosen.digest, subject)
        inner = parse_manifest(raw, digest, media_type, subject)
        if not isinstance(inner, Manifest):
            raise CorruptModel(subject, "an index points at another index; nested indexes are not supported")
        return inner

    def blob_url(self, repository: str, digest: str) -> str:
        return f"{self.base}/v2/{repository}/blobs/{digest}"

    def read_blob(self, repository: str, descriptor: Descriptor, subject: str, limit: int = 4 << 20) -> bytes:
        """A small blob (a config) read into memory and checked against its descriptor."""
        if descriptor.size > limit:
            raise CorruptModel(subject, f"the config blob is {descriptor.size} bytes; refusing more than {limit}")
        urls = self.mirror_blob_urls(repository, descriptor.digest)
        data = read_from_mirrors(self.client, urls, descriptor, subject, limit, self._check_host, self.settings)
        if data is not None:
            return data
        response = self.request("GET", f"/v2/{repository}/blobs/{descriptor.digest}", repository, stream=True)
        try:
            if response.status_code == 404:
                raise NotFound(f"{subject}: registry {self.registry} has no blob {descriptor.digest} in {repository}")
            if response.status_code != 200:
                raise TransferFailed(f"{subject}: registry {self.registry} answered {response.status_code} for a blob")
            data = read_at_most(response, limit)
        finally:
            response.close()
        if len(data) != descriptor.size or "sha256:" + hashlib.sha256(data).hexdigest() != descriptor.digest:
            raise CorruptModel(subject, f"blob {descriptor.digest} does not match its descriptor (size or digest)")
        return data

    # ------------------------------------------------------------------------------------ push
    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository, actions="pull,push")
        response.close()
        return response.status_code == 200

    def _start_upload(self, repository: str, digest: str) -> str:
        """POST an upload session; returns the URL to PUT the bytes to."""
        path = f"/v2/{repository}/blobs/uploads/"
        started = self.request("POST", path, repository, actions="pull,push", follow=False)
        started.close()
        if started.status_code != 202 or "Location" not in started.headers:
            raise TransferFailed(
                f"registry {self.registry}: starting an upload to {repository} gave {started.status_code}"
            )
        location = urljoin(self.base + "/", started.headers["Location"])
        return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})

    def upload_blob(self, repository: str, path: Path, digest: str, size: int, subject: str = "") -> bool:
        """Monolithic upload (POST then PUT with the body); False when the registry already had it. The bytes
        are hashed as they are sent: a file that no longer has ``digest`` is ``DigestMismatch`` (exit 4)."""
        if self.blob_exists(repository, digest):
            return False
        hasher = hashlib.sha256()

        def body() -> Iterator[bytes]:
            left = size  # never more than declared: a longer file fails the digest check below
            with open(path, "rb") as fh:
                while left > 0 and (chunk := fh.read(min(1 << 20, left))):
                    left -= len(chunk)
                    hasher.update(chunk)
                    yield chunk

        def check() -> None:
            if f"sha256:{hasher.hexdigest()}" != digest:
                raise DigestMismatch(
                    f"{subject or repository} [{path}]",
                    digest,
                    f"sha256:{hasher.hexdigest()}",
                    "it changed since it was verified; nothing was published",
                )

        actual_size = path.stat().st_size
        if actual_size != size:
            raise DigestMismatch(
                f"{subject or repository} [{path}]",
                f"{digest} ({size} bytes)",
                f"{actual_size} bytes",
                "it changed since it was verified; nothing was published",
            )
        try:
            self._put_blob(repository, digest, body(), {"Content-Length": str(size)})
        except TransferFailed:
            check()  # the registry refused the bytes because they are not the digest: say so
            raise
        check()
        return True

    def upload_bytes(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.blob_exists(repository, digest):
            self._put_blob(repository, digest, data, {})
        return digest

    def _put_blob(self, repository: str, digest: str, content: Any, headers: dict[str, str]) -> None:
        url = self._start_upload(repository, digest)
        response = self.request(
            "PUT",
            url,
            repository,
            actions="pull,push",
            headers={"Content-Type": "application/octet-stream", **headers},
            content=content,
            follow=False,
        )
        response.close()
        if response.status_code != 201:
            raise TransferFailed(
                f"registry {self.registry}: uploading {digest} to {repository} gave {response.status_code}"
            )

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            actions="pull,push",
            headers={"Content-Type": media_type},
            content=data,
            follow=False,
        )
        try:
            if response.status_code != 201:
                detail = redact_text(response.text[:300]) if response.status_code < 500 else ""
                raise TransferFailed(
                    f"registry {self.registry}: putting the manifest {repository}:{reference} gave "
                    f"{response.status_code} {detail}".strip()
                )
        finally:
            response.close()
        return "sha256:" + hashlib.sha256(data).hexdigest()
