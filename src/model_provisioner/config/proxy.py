"""Forward proxies from the standard environment: ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and
``NO_PROXY`` (each also lower-case; the lower-case one wins, as in curl and Python's ``urllib``).

- ``HTTPS_PROXY`` is used for ``https://`` URLs (Hub, CDNs, registries, S3 over TLS), ``HTTP_PROXY`` for
  ``http://`` ones; ``ALL_PROXY`` for a scheme with neither. A proxy URL is ``http://[user:pass@]host:port``
  or ``https://…`` (TLS to the proxy); a bare ``host:port`` means ``http://host:port``.
- ``NO_PROXY`` is a comma-separated list: ``*`` (no proxy at all), a name (``example.com`` or
  ``.example.com``: that host and every host under it), ``name:port`` (only that port), an IP address in any
  spelling (that address) or a CIDR (``10.0.0.0/8``: every IP literal inside). Names are not resolved to
  match a CIDR, as in curl. Loopback is proxied like any other host unless ``NO_PROXY`` says otherwise.
- Credentials in a proxy URL are registered as secrets: they are redacted from every log, error, catalog row,
  provenance line and handoff file.

``docs/fleet.md`` says which topologies need a proxy and how the policy applies through one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from model_provisioner.core.errors import ConfigError
from model_provisioner.core.hosts import canonical_host, parse_ip
from model_provisioner.core.redact import redact_url, register_secret

PROXY_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class NoProxyRule:
    """One ``NO_PROXY`` entry: a name suffix, an address or network, and optionally a port."""

    host: str = ""
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            address = parse_ip(host)
            return address is not None and address in self.network
        name = canonical_host(host).rstrip(".")
        return name == self.host or name.endswith("." + self.host)


@dataclass(frozen=True)
class ProxySettings:
    """Which proxy each URL goes through (``None``: a direct connection)."""

    http: str | None = field(default=None, repr=False)  # may hold credentials
    https: str | None = field(default=None, repr=False)
    no_proxy: tuple[NoProxyRule, ...] = ()
    #: ``NO_PROXY=*``: nothing is proxied
    bypass_all: bool = False

    def __post_init__(self) -> None:
        for proxy in (self.http, self.https):
            password = urlsplit(proxy).password if proxy else None
            if password:
                register_secret(unquote(password))
                register_secret(password)

    @property
    def enabled(self) -> bool:
        return not self.bypass_all and (self.http is not None or self.https is not None)

    def proxy_for(self, scheme: str, host: str, port: int | None = None) -> str | None:
        """The proxy URL for a request to ``scheme://host:port``, or None to connect directly."""
        if self.bypass_all:
            return None
        proxy = self.https if scheme.lower() == "https" else self.http if scheme.lower() == "http" else None
        if proxy is None:
            return None
        where = port if port is not None else (443 if scheme.lower() == "https" else 80)
        if any(rule.matches(host, where) for rule in self.no_proxy):
            return None
        return proxy

    def proxies(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for p in (self.http, self.https) if p is not None))

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ProxySettings:
        """The proxies the environment names (nothing set: no proxy)."""

        def lookup(name: str) -> tuple[str, str] | None:
            for variable in (name.lower(), name.upper()):
                value = env.get(variable, "").strip()
                if value:
                    return variable, value
            return None

        every = lookup("ALL_PROXY")
        found = {scheme: lookup(f"{scheme}_PROXY") or every for scheme in PROXY_SCHEMES}
        urls = {scheme: _proxy_url(*pair) if pair else None for scheme, pair in found.items()}
        no_proxy = lookup("NO_PROXY")
        entries = [e.strip() for e in no_proxy[1].split(",") if e.strip()] if no_proxy else []
        bypass_all = "*" in entries
        rules = tuple(_no_proxy_rule(no_proxy[0], e) for e in entries if e != "*") if no_proxy else ()
        return cls(http=urls["http"], https=urls["https"], no_proxy=rules, bypass_all=bypass_all)


def _proxy_url(variable: str, value: str) -> str:
    url = value if "://" in value else f"http://{value}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [v6 address: its text may hold a password, so it is not quoted
        raise ConfigError(variable, None, f"the proxy URL cannot be read ({exc}); use http://host:port") from None
    shown = redact_url(url)[:200]
    if parts.scheme.lower() not in PROXY_SCHEMES:
        raise ConfigError(
            variable, None, f"proxy {shown!r} has scheme {parts.scheme!r}; use http://host:port or https://host:port"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(variable, None, f"proxy {shown!r} has an invalid port; use http://host:port") from None
    if not parts.hostname:
        raise ConfigError(variable, None, f"proxy {shown!r} names no host; use http://host:port")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(variable, None, f"proxy {shown!r} has a path; use only http://host:port")
    del port  # validated above; httpx takes the scheme's default when there is none
    return f"{parts.scheme.lower()}://{parts.netloc}"


def _no_proxy_rule(variable: str, entry: str) -> NoProxyRule:
    text = entry.strip().lower()
    host, port = text, None
    if text.startswith("["):  # [v6]:port or [v6]
        inner, _, rest = text[1:].partition("]")
        host = inner
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif text.count(":") == 1:  # name:port or v4:port (a bare v6 address has several colons)
        name, _, digits = text.partition(":")
        if not digits.isdigit():
            raise ConfigError(variable, None, f"NO_PROXY entry {entry[:200]!r} has an invalid port")
        host, port = name, int(digits)
    if "/" in host:
        try:
            return NoProxyRule(network=ipaddress.ip_network(host, strict=False), port=port)
        except ValueError:
            raise ConfigError(
                variable, None, f"NO_PROXY entry {entry[:200]!r} is not a network; write e.g. 10.0.0.0/8"
            ) from None
    address = parse_ip(host)
    if address is not None:
        return NoProxyRule(network=ipaddress.ip_network(address), port=port)
    name = host.lstrip("*").lstrip(".").rstrip(".")
    if not name:
        raise ConfigError(variable, None, f"NO_PROXY entry {entry[:200]!r} names no host")
    return NoProxyRule(host=canonical_host(name), port=port)
