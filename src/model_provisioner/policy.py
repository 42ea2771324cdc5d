"""Policy: which refs and hosts may be used, decided before any socket is opened.

Rules are globs. ``allow``/``deny`` match canonical ref ids (``hf:myorg/*``, ``https://cdn.example.com/*``,
``file:/models/*``); ``allow_hosts``/``deny_hosts`` match every host we are about to connect to (Hub
endpoint, CDN redirect target, mirror), written ``host`` or ``scheme://host``. Deny wins; a non-empty
allow list admits only what it matches. ``label`` names the policy in logs and provenance.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import OfflineError, PolicyDenied
from .refs import ModelRef


@dataclass(frozen=True)
class Policy:
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    label: str = "default"
    offline: bool = False

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
        host = host.lower()
        candidates = (host, f"{scheme}://{host}")
        for candidate in candidates:
            rule = _first_match(self.deny_hosts, candidate)
            if rule is not None:
                raise PolicyDenied(f"connection to {shown_url} denied by policy {self.label!r} (deny_hosts {rule!r})")
        if self.allow_hosts and all(_first_match(self.allow_hosts, c) is None for c in candidates):
            raise PolicyDenied(
                f"connection to {shown_url} not allowed by policy {self.label!r}: host {host} matches none of "
                f"allow_hosts {list(self.allow_hosts)}"
            )


def _first_match(rules: Sequence[str], value: str) -> str | None:
    for rule in rules:
        if fnmatch.fnmatchcase(value, rule):
            return rule
    return None
