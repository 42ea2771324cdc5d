"""Requests through the forward proxy the environment names (``config/proxy.py``), on the same guard.

``ProxyRouter`` is the client's one transport when a proxy is configured: each request goes to the direct
transport or to the transport of its proxy, by ``ProxySettings.proxy_for``. Through a proxy:

- the proxy itself is reached on a guarded socket that admits the proxy's own ``host:port`` (the operator
  configured it), as the operator's endpoints are admitted for requests through the HTTP API;
- the target is still checked by name before every hop (``open_following``), an IP literal by address; a
  name is resolved here too when it can be, and each address it has is checked, so a name that points at
  a denied or internal address is refused through a proxy as it is directly. A name only the proxy can
  resolve is left to the proxy (it is the operator's boundary);
- a failure to reach the proxy names the proxy (without its credentials).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from model_provisioner.config.policy import Policy
from model_provisioner.config.proxy import ProxySettings
from model_provisioner.core.errors import PolicyDenied
from model_provisioner.core.hosts import parse_ip, resolve
from model_provisioner.core.redact import redact_url
from model_provisioner.net.socket_policy import guarded_transport

if TYPE_CHECKING:
    import httpx


def proxied_transport(proxy: str, policy: Policy, **kwargs: Any) -> Any:
    """An ``httpx.HTTPTransport`` that sends every request through ``proxy`` (CONNECT for https)."""
    import httpx  # noqa: PLC0415  # heavy: ~75 ms; only network schemes need it

    parts = urlsplit(proxy)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    admitted = replace(policy, internal_allow=(*policy.internal_allow, f"{parts.hostname}:{port}"))
    return guarded_transport(admitted, proxy=httpx.Proxy(proxy), **kwargs)


def proxy_router(routes: ProxySettings, policy: Policy, direct: Any, **kwargs: Any) -> Any:
    """The transport that routes each request to ``direct`` or to its proxy's transport."""
    import httpx  # noqa: PLC0415  # heavy: see proxied_transport

    class ProxyRouter(httpx.BaseTransport):
        def __init__(self) -> None:
            self.direct = direct
            self.by_proxy = {proxy: proxied_transport(proxy, policy, **kwargs) for proxy in routes.proxies()}

        @property
        def transports(self) -> list[Any]:
            return [self.direct, *self.by_proxy.values()]

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            url = request.url
            proxy = routes.proxy_for(url.scheme, url.host, url.port)
            if proxy is None:
                return self.direct.handle_request(request)  # type: ignore[no-any-return]
            _check_target(policy, url.host, url.port or (443 if url.scheme == "https" else 80))
            try:
                response: httpx.Response = self.by_proxy[proxy].handle_request(request)
            except (httpx.ConnectError, httpx.ProxyError, httpx.ConnectTimeout) as exc:
                if isinstance(exc, httpx.ProxyError) and str(exc).startswith("407"):
                    raise _credentials_refused(proxy, url.scheme) from None  # CONNECT answered 407
                raise type(exc)(f"through proxy {redact_url(proxy)}: {exc}", request=request) from None
            if response.status_code == 407:
                response.close()
                raise _credentials_refused(proxy, url.scheme)
            return response

        def close(self) -> None:
            for transport in self.transports:
                transport.close()

    return ProxyRouter()


def _credentials_refused(proxy: str, scheme: str) -> PolicyDenied:
    variable = "HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY"
    return PolicyDenied(
        f"proxy {redact_url(proxy)} refused the credentials (HTTP 407 Proxy Authentication Required); set "
        f"{variable} to http://user:password@host:port with the proxy's user and password"
    )


def _check_target(policy: Policy, host: str, port: int) -> None:
    if parse_ip(host) is not None or not (policy.block_internal or policy.deny_hosts or policy.deny_networks):
        return  # a literal was checked by address before the hop; no address rule to apply
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        return  # only the proxy can resolve it
    for address in addresses:
        policy.check_address(host, port, address)
