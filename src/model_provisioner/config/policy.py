"""Policy: which refs and hosts may be used, decided before any socket is opened.

Rules are globs. ``allow``/``deny`` match canonical ref ids (``hf:myorg/*``, ``https://cdn.example.com/*``,
``file:/models/*``); ``allow_hosts``/``deny_hosts`` match every host we are about to connect to (Hub
endpoint, CDN redirect target, mirror), written ``host`` or ``scheme://host``, in canonical form (an IP
literal in any spelling is matched as its dotted address), and ``deny_hosts`` again against every address
the host resolves to when the socket is opened (``netguard``). Deny wins; a non-empty allow list admits
only what it matches. ``label`` names the policy in logs and provenance.

``deny_networks`` (every entry point: CLI, API, KServe's storage initializer) refuses link-local and
cloud-metadata addresses by default (``169.254.0.0/16``, ``fe80::/10``, ``fd00:ec2::254``): a model URI
from a cluster user must not read the node's instance metadata. Set it to ``[]`` to allow them.

``block_internal`` (on for requests that arrive through the HTTP API) refuses connections to loopback,
private, link-local (cloud metadata) and other non-global addresses, except those ``internal_allow``
admits: a CIDR (``10.1.0.0/16``), a host glob, or an exact ``host:port`` (the operator's own endpoints).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from model_provisioner.core.errors import ConfigError, OfflineError, PolicyDenied
from model_provisioner.core.hosts import IPAddress, canonical_host, is_internal, parse_ip
from model_provisioner.core.refs import ModelRef

DEFAULT_DENY_NETWORKS = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")


@dataclass(frozen=True)
class Policy:
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    label: str = "default"
    offline: bool = False
    block_internal: bool = False
    internal_allow: tuple[str, ...] = ()
    deny_networks: tuple[str, ...] = DEFAULT_DENY_NETWORKS

    def check_ref(self, ref: ModelRef) -> None:
        rule = _first_match(self.deny, ref.id)
        if rule is not None:
            raise PolicyDenied(f"{ref.id} is denied by policy {self.label!r} (deny rule {rule!r})")
        if self.allow and _first_match(self.allow, ref.id) is None:
            raise PolicyDenied(
                f"{ref.id} is not allowed by policy {self.label!r}: it matches none of the allow rules "
                f"{list(self.allow)}"
            )

    def check_host(self, scheme: str, host: str, shown_url: str) -> None:
        if self.offline:
            raise OfflineError(f"offline mode is on: refusing to connect to {shown_url}")
        raw = host.lower()
        host = canonical_host(host)
        candidates = tuple(dict.fromkeys((host, f"{scheme}://{host}", raw, f"{scheme}://{raw}")))
        for candidate in candidates:
            rule = _first_match(self.deny_hosts, candidate)
            if rule is not None:
                raise PolicyDenied(f"connection to {shown_url} denied by policy {self.label!r} (deny_hosts {rule!r})")
        if self.allow_hosts and all(_first_match(self.allow_hosts, c) is None for c in candidates):
            raise PolicyDenied(
                f"connection to {shown_url} not allowed by policy {self.label!r}: host {host} matches none of "
                f"allow_hosts {list(self.allow_hosts)}"
            )
        literal = parse_ip(host)
        if literal is not None:
            self.check_address(host, _port_of(scheme, shown_url), literal, shown_url)

    def check_address(self, host: str, port: int | None, address: IPAddress, shown: str | None = None) -> None:
        """At connect time: ``address`` is what ``host`` resolved to."""
        where = shown or (f"{host}:{port}" if port is not None else host)
        rule = _first_match(self.deny_hosts, str(address))
        if rule is not None:
            raise PolicyDenied(
                f"connection to {where} ({address}) denied by policy {self.label!r} (deny_hosts {rule!r})"
            )
        for network in self.deny_networks:
            if address in ipaddress.ip_network(network, strict=False):
                raise PolicyDenied(
                    f"connection to {where} refused: {address} is in {network}, a link-local or cloud-metadata "
                    f"network (policy deny_networks); if this endpoint is really wanted, remove {network} from "
                    "policy.deny_networks in the settings"
                )
        if self.block_internal and is_internal(address) and not self._internal_allowed(host, port, address):
            raise PolicyDenied(
                f"connection to {where} refused: it is an internal address ({address}), and requests through the "
                "HTTP API may not reach internal addresses; an operator can admit it with api_allow_networks "
                "in the settings"
            )

    def _internal_allowed(self, host: str, port: int | None, address: IPAddress) -> bool:
        name = canonical_host(host)
        for rule in self.internal_allow:
            try:
                if address in ipaddress.ip_network(rule, strict=False):
                    return True
                continue
            except ValueError:
                pass
            rule_host, _, rule_port = rule.rpartition(":")
            if rule_port.isdigit() and rule_host:
                if port is not None and int(rule_port) == port and canonical_host(rule_host.strip("[]")) == name:
                    return True
            elif fnmatch.fnmatchcase(name, rule.lower()):
                return True
        return False


def _port_of(scheme: str, url: str) -> int | None:

    try:
        port = urlsplit(url).port
    except ValueError:
        return None
    return port if port is not None else {"https": 443, "http": 80}.get(scheme.lower())


def _first_match(rules: Sequence[str], value: str) -> str | None:
    for rule in rules:
        if fnmatch.fnmatchcase(value, rule):
            return rule
    return None


def policy_from(path: str, values: dict[str, Any]) -> Policy:
    """The settings file's ``policy:`` section (types already checked): every ``deny_networks`` entry a CIDR."""
    for network in values.get("deny_networks", ()):
        try:
            ipaddress.ip_network(str(network), strict=False)
        except ValueError:
            why = f"{str(network)[:80]!r} is not a CIDR (e.g. 169.254.0.0/16)"
            raise ConfigError(path, "policy.deny_networks", why) from None
    return Policy(**values)
