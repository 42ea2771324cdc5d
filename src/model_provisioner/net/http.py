"""The one way we make an HTTP client: httpx (a maintained, typed HTTP/1.1 client with streaming, per-phase
timeouts and pooling) on a transport whose every connection is checked by the policy (``net/socket_policy.py``),
no netrc, the forward proxy of the settings (``HTTPS_PROXY``/``NO_PROXY``, ``net/proxy.py``), our User-Agent,
and redirects followed by hand (``open_following``) so that credentials never cross to another origin."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from model_provisioner.config.policy import Policy
from model_provisioner.config.settings import TransferSettings
from model_provisioner.core.errors import TransferFailed, quote
from model_provisioner.core.redact import redact_url
from model_provisioner.core.version import VERSION
from model_provisioner.net.proxy import proxy_router
from model_provisioner.net.redirects import origin_of, redirect_headers
from model_provisioner.net.socket_policy import guarded_transport
from model_provisioner.net.tls import client_context

if TYPE_CHECKING:
    import httpx

USER_AGENT = f"model-provisioner/{VERSION}"
MAX_REDIRECTS = 10
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


def new_client(
    settings: TransferSettings,
    policy: Policy,
    *,
    max_connections: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[httpx.Client, Any]:
    """(client, transport): timeouts from the settings (the read timeout is our stall detector), the guarded
    transport (kept so a cancellation can shut its sockets down), no automatic redirects."""
    import httpx  # noqa: PLC0415  # heavy: ~75 ms; only network schemes need it

    limits = (
        httpx.Limits(max_connections=max_connections, max_keepalive_connections=16)
        if max_connections is not None
        else None
    )
    options: dict[str, Any] = {"verify": client_context(settings.ca_bundle)}
    if limits is not None:
        options["limits"] = limits
    transport = guarded_transport(policy, **options)
    if settings.proxy.enabled:
        transport = proxy_router(settings.proxy, policy, transport, **options)
    client = httpx.Client(
        follow_redirects=False,
        timeout=httpx.Timeout(settings.stall_timeout_s, connect=settings.connect_timeout_s),
        transport=transport,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
    )
    return client, transport


def open_following(
    client: httpx.Client,
    url: str,
    headers: Mapping[str, str],
    *,
    check_host: Callable[[str], None],
    allow_downgrade: bool,
    method: str = "GET",
    reauth: Callable[[], Mapping[str, str]] | None = None,
    shown: str | None = None,
) -> tuple[httpx.Response, str, dict[str, str]]:
    """Send ``method`` (streamed) and follow redirects by hand: every hop's host is checked before a socket is
    opened to it, credentials go only to the very same origin, an https -> http downgrade is refused unless
    allowed, and a 401 from the first origin is answered once with ``reauth()``. Returns the final response,
    its URL and the headers sent to it."""
    import httpx  # noqa: PLC0415  # heavy: see new_client

    current = url
    sent = dict(headers)
    origin = origin_of(url)
    reauthed = False
    for _ in range(MAX_REDIRECTS + 2):
        check_host(current)
        try:
            request = client.build_request(method, current, headers=sent)
        except (ValueError, httpx.InvalidURL) as exc:  # a redirect to a host no URL can name
            raise TransferFailed(
                f"{shown or redact_url(url)}: cannot follow to {quote(redact_url(current))}: {exc}"
            ) from None
        response = client.send(request, stream=True)
        if response.status_code == 401 and reauth is not None and origin_of(current) == origin and not reauthed:
            response.close()
            reauthed = True
            sent = {**sent, **reauth()}
            continue
        if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
            location = urljoin(current, response.headers["Location"])
            response.close()
            sent = redirect_headers(current, location, sent, allow_downgrade)
            current = location
            continue
        return response, current, sent
    raise TransferFailed(f"too many redirects (>{MAX_REDIRECTS}) from {shown or redact_url(url)}")


def host_checker(policy: Policy | None) -> Callable[[str], None]:
    """``check_host`` for ``open_following``: the policy's host rules on a URL (nothing when there is none)."""

    def check(url: str) -> None:
        if policy is not None:
            parts = urlsplit(url)
            policy.check_host(parts.scheme, parts.hostname or "", redact_url(url))

    return check


def read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The body, but never more than ``limit`` + 1 bytes in memory (the caller refuses anything longer)."""
    out = bytearray()
    for chunk in response.iter_bytes():
        out += chunk
        if len(out) > limit:
            break
    return bytes(out[: limit + 1])
