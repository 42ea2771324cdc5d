"""A small OCI distribution-spec client on httpx: auth, manifests, blob locations, and push.

Blob *downloads* go through the transfer engine (resume, parallel ranges, digest while streaming); this
client only gives it a URL and the auth header. Everything else (manifests, token exchange, uploads) is
here.

- Auth: anonymous first; on ``401`` the ``WWW-Authenticate`` challenge decides. ``Bearer realm=…`` gets a
  token from the realm (which may be on another host; the policy is checked first), with Basic credentials
  when we have them (an identity token is exchanged by OAuth2 POST instead); ``Basic`` sends them directly.
  Credentials come from the settings (``oci_credentials``) or from the Docker config: credential helpers,
  the credential store or ``auths`` (``dockercreds.py``), looked up only when a registry asks.
- Transport: ``https://`` except for loopback registries and hosts listed in ``oci_plain_http`` (as
  Docker's insecure registries).
- Manifests: ``Accept`` covers OCI manifest, OCI index and Docker v2 manifest/list. A manifest pulled by
  digest must hash to that digest; a manifest pulled by tag is pinned to the digest of its bytes (and the
  registry's ``Docker-Content-Digest``, when sent, must agree).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin, urlsplit

from .dockercreds import RegistryLogin, docker_login
from .errors import CorruptModel, DigestMismatch, NotFound, PolicyDenied, TransferFailed
from .netguard import guarded_transport, origin_of, redirect_headers, resolves_to_loopback
from .redact import redact_text, redact_url, register_secret

if TYPE_CHECKING:
    import httpx

    from .config import Settings

log = logging.getLogger("model_provisioner")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_MANIFEST_BYTES = 4 << 20  # the distribution spec's suggested limit
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]
    artifact_type: str | None = None
    platform: dict[str, Any] | None = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class Manifest:
    """A parsed image manifest (never an index: indexes are resolved to one of their manifests)."""

    digest: str
    media_type: str
    raw: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]
    artifact_type: str | None


def parse_descriptor(data: Any, where: str) -> Descriptor:
    """Validate one descriptor; every problem is a CorruptModel naming ``where`` (never a KeyError)."""
    if not isinstance(data, dict):
        raise CorruptModel(where, "a descriptor is not a JSON object")
    media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
    if not isinstance(media_type, str) or not media_type or len(media_type) > 255:
        raise CorruptModel(where, "a descriptor has no valid mediaType")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise CorruptModel(where, f"descriptor digest {str(digest)[:80]!r} is not sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > 1 << 50:
        raise CorruptModel(where, f"descriptor size {str(size)[:40]!r} is not a non-negative integer")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise CorruptModel(where, "descriptor annotations must map strings to strings")
    artifact_type = data.get("artifactType")
    platform = data.get("platform")
    return Descriptor(
        media_type,
        digest,
        size,
        dict(annotations),
        artifact_type if isinstance(artifact_type, str) else None,
        platform if isinstance(platform, dict) else None,
    )


def parse_manifest(raw: bytes, digest: str, media_type_header: str | None, where: str) -> Manifest | list[Descriptor]:
    """An image manifest, or the manifest descriptors of an index."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CorruptModel(where, "the manifest is not valid JSON") from None
    if not isinstance(data, dict):
        raise CorruptModel(where, "the manifest is not a JSON object")
    media_type = data.get("mediaType") or (media_type_header or "").split(";")[0].strip()
    if data.get("schemaVersion") != 2:
        raise CorruptModel(where, f"unsupported manifest schemaVersion {data.get('schemaVersion')!r} (need 2)")
    if media_type in (OCI_INDEX, DOCKER_LIST) or ("manifests" in data and "layers" not in data):
        entries = data.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise CorruptModel(where, "the index lists no manifests")
        return [parse_descriptor(e, where) for e in entries[:1024]]
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise CorruptModel(where, "the manifest has no layers list")
    if len(layers) > 10_000:
        raise CorruptModel(where, f"the manifest lists {len(layers)} layers; refusing more than 10000")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise CorruptModel(where, "manifest annotations must be a JSON object")
    artifact_type = data.get("artifactType")
    return Manifest(
        digest=digest,
        media_type=str(media_type),
        raw=raw,
        config=parse_descriptor(data.get("config"), where),
        layers=tuple(parse_descriptor(layer, where) for layer in layers),
        annotations={str(k): str(v) for k, v in annotations.items()},
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
    )




class RegistryClient:
    """One registry host. Thread-safe for reads; tokens are cached per scope."""

    def __init__(self, registry: str, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        # loopback decided on the resolved address: ``127.attacker.example`` is a name like any other
        plain = registry in settings.oci_plain_http or resolves_to_loopback(registry)
        self.base = f"{'http' if plain else 'https'}://{registry}"
        self._login: RegistryLogin | None = None
        self._login_resolved = False
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self._client: httpx.Client | None = None

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

    # ----------------------------------------------------------------------------------- plumbing
    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            import httpx

            t = self.settings.transfer
            self._client = httpx.Client(
                follow_redirects=False,
                timeout=httpx.Timeout(t.stall_timeout_s, connect=t.connect_timeout_s),
                transport=guarded_transport(self.settings.policy, verify=t.ca_bundle if t.ca_bundle else True),
                trust_env=False,
                headers={"User-Agent": "model-provisioner/0.1"},
            )
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
        """Send with auth; answer a 401 challenge once; retry transport errors, 429 and 5xx (bounded)."""
        import httpx

        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        scope = f"repository:{repository}:{actions}"
        attempts = max(1, self.settings.transfer.attempts)
        challenged = False
        attempt = redirects = 0
        while True:
            attempt += 1
            self._check_host(url)
            send_headers = {**(headers or {}), **self.auth_header(repository, actions)}
            try:
                request = self.client.build_request(method, url, headers=send_headers, content=content)
                response = self.client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                if attempt >= attempts or content is not None:
                    why = redact_text(str(exc)) or type(exc).__name__
                    raise TransferFailed(f"{self.registry}: {method} {redact_url(url)} failed: {why}") from None
                time.sleep(min(self.settings.transfer.backoff_max_s, self.settings.transfer.backoff_base_s * attempt))
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
                login = self.login
                who = (
                    f"the credentials from {login.source} were refused"
                    if login
                    else "it needs credentials and none were found"
                )
                raise PolicyDenied(
                    f"registry {self.registry} denied {method} for {repository} ({status}): {who}; add them to "
                    f"~/.docker/config.json (docker login {self.registry}) or to oci_credentials in the settings"
                )
            if (status == 429 or status >= 500) and attempt < attempts and content is None:
                response.close()
                time.sleep(min(self.settings.transfer.backoff_max_s, self.settings.transfer.backoff_base_s * attempt))
                continue
            if (
                follow
                and status in (301, 302, 303, 307, 308)
                and "Location" in response.headers
                and method in ("GET", "HEAD")
            ):
                response.close()
                target = urljoin(url, response.headers["Location"])
                if origin_of(target) != origin_of(url):
                    # a redirect to storage on another origin: no registry credentials go there (nor over a
                    # downgrade to plain http, which is refused unless the settings allow it)
                    plain = redirect_headers(url, target, headers or {}, self.settings.transfer.allow_https_downgrade)
                    self._check_host(target)
                    return self.client.send(self.client.build_request(method, target, headers=plain), stream=stream)
                redirects += 1
                if redirects > 10:
                    raise TransferFailed(f"registry {self.registry}: too many redirects for {redact_url(url)}")
                url = target
                attempt -= 1  # a redirect is not a failed attempt
                continue
            return response

    def _answer_challenge(self, challenge: str, scope: str) -> None:
        import httpx

        scheme = challenge.split(" ", 1)[0].lower()
        params = dict(_CHALLENGE_RE.findall(challenge))
        login = self.login
        if scheme == "basic":
            if login is None:
                raise PolicyDenied(
                    f"registry {self.registry} requires a login and no credentials were found; run "
                    f"`docker login {self.registry}` or add oci_credentials to the settings"
                )
            if login.is_identity_token:
                raise PolicyDenied(
                    f"registry {self.registry} asks for a password, but {login.source} holds an identity token; "
                    f"run `docker login {self.registry}` with a password or add oci_credentials to the settings"
                )
            self._auth[scope] = "Basic " + base64.b64encode(f"{login.username}:{login.secret}".encode()).decode()
            return
        if scheme != "bearer" or "realm" not in params:
            raise TransferFailed(f"registry {self.registry} sent an auth challenge this client cannot answer")
        realm = params["realm"]
        query = {"service": params.get("service", ""), "scope": params.get("scope") or scope}
        url = realm + ("&" if "?" in realm else "?") + urlencode({k: v for k, v in query.items() if v})
        self._check_host(url)
        if login is not None and login.is_identity_token:
            # OAuth2 (distribution's token spec): the identity token is a refresh token, exchanged by POST
            form = {
                "grant_type": "refresh_token",
                "refresh_token": login.secret,
                "client_id": "model-provisioner",
                **{k: v for k, v in query.items() if v},
            }
            request = self.client.build_request("POST", realm, data=form)
            auth: httpx.Auth | None = None
        else:
            request = self.client.build_request("GET", url)
            auth = httpx.BasicAuth(login.username, login.secret) if login is not None else None
        try:
            response = self.client.send(request, auth=auth, stream=True)
            try:
                raw = _read_at_most(response, 1 << 20)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise TransferFailed(
                f"registry {self.registry}: token service {redact_url(realm)} unreachable: {type(exc).__name__}"
            ) from None
        if response.status_code in (401, 403):
            raise PolicyDenied(
                f"registry {self.registry}: the token service {redact_url(realm)} refused "
                + (f"the credentials from {login.source}" if login is not None else "anonymous access")
                + f" for {query['scope']}; run `docker login {self.registry}` or add oci_credentials to the settings"
            )
        try:
            body = json.loads(raw)
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token:
            raise TransferFailed(f"registry {self.registry}: the token service answered without a token")
        register_secret(str(token))
        self._auth[scope] = f"Bearer {token}"
        # a push token also covers pulls of the same repository
        if scope.endswith(":pull,push"):
            self._auth[scope.rsplit(":", 1)[0] + ":pull"] = f"Bearer {token}"

    # ---------------------------------------------------------------------------------- manifests
    def get_manifest(self, repository: str, reference: str, subject: str) -> tuple[bytes, str, str | None]:
        """(bytes, digest, media type). A digest reference must match the bytes."""
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
            length = int(response.headers.get("Content-Length") or 0)
            if length > MAX_MANIFEST_BYTES:
                raise CorruptModel(subject, f"the manifest is {length} bytes; refusing more than {MAX_MANIFEST_BYTES}")
            raw = _read_at_most(response, MAX_MANIFEST_BYTES)
        finally:
            response.close()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise CorruptModel(subject, f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise CorruptModel(
                subject, f"the registry sent a manifest hashing to {digest}, not the requested {reference}"
            )
        header = response.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != digest:
            raise CorruptModel(subject, f"the manifest hashes to {digest} but the registry says {header}")
        return raw, digest, response.headers.get("Content-Type")

    def resolve(self, repository: str, reference: str, subject: str) -> Manifest:
        """Fetch and parse a manifest; an index resolves to its first image manifest."""
        raw, digest, media_type = self.get_manifest(repository, reference, subject)
        parsed = parse_manifest(raw, digest, media_type, subject)
        if isinstance(parsed, Manifest):
            return parsed
        chosen = _choose_from_index(parsed)
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
        response = self.request("GET", f"/v2/{repository}/blobs/{descriptor.digest}", repository, stream=True)
        try:
            if response.status_code == 404:
                raise NotFound(f"{subject}: registry {self.registry} has no blob {descriptor.digest} in {repository}")
            if response.status_code != 200:
                raise TransferFailed(f"{subject}: registry {self.registry} answered {response.status_code} for a blob")
            data = _read_at_most(response, limit)
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
                    f"{subject or repository} [{path}]", digest, f"sha256:{hasher.hexdigest()}",
                    "it changed since it was verified; nothing was published",
                )

        actual_size = path.stat().st_size
        if actual_size != size:
            raise DigestMismatch(
                f"{subject or repository} [{path}]", f"{digest} ({size} bytes)", f"{actual_size} bytes",
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


def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The body, but never more than ``limit`` + 1 bytes in memory (the caller refuses anything longer)."""
    out = bytearray()
    for chunk in response.iter_bytes():
        out += chunk
        if len(out) > limit:
            break
    return bytes(out[: limit + 1])


def _choose_from_index(entries: list[Descriptor]) -> Descriptor:
    """Prefer a model artifact, then linux/amd64, then the first entry."""
    for entry in entries:
        if entry.artifact_type and ("model" in entry.artifact_type or "ai" in entry.artifact_type):
            return entry
    for entry in entries:
        platform = entry.platform or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return entry
    return entries[0]
