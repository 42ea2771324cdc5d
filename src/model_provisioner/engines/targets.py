"""What a request's ``model`` names for the gateway (docs/engines.md, "One endpoint for every model"): an alias of the
settings' ``models:`` list, a catalog id or a ref, and the pool that serves it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from model_provisioner.config.gateway import GatewaySettings
from model_provisioner.core.errors import InvalidInput, NotFound, quote
from model_provisioner.core.refs import FileRef, parse


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: the ref to ensure, with its digest, engine flags and keep_alive."""

    name: str
    ref: str
    model_id: str
    digest: str | None = None
    flags: tuple[str, ...] = ()
    keep_alive_s: float | None = None

    @property
    def pool(self) -> str:
        key = hashlib.sha256("\n".join((self.model_id, *self.flags)).encode()).hexdigest()
        return f"gw-{key[:12]}"


def target_of(name: str, settings: GatewaySettings, check_ref: Callable[[str], None]) -> Target:
    """A request's ``model``: an alias of the ``models:`` list, else a catalog id or a ref (``check_ref``: the
    API's rules for refs, e.g. file refs only under its roots). A bare word that is neither is not taken for a
    file in the server's working directory."""
    if not name or len(name) > 4096:
        raise InvalidInput("model must be an alias, a model id or a ref of at most 4096 characters")
    listed = settings.model(name)
    if listed is not None:
        model_id = parse(listed.ref).id
        return Target(listed.alias, listed.ref, model_id, listed.digest, listed.flags, listed.keep_alive_s)
    ref = parse(name)
    if isinstance(ref, FileRef) and not name.startswith(("/", "./", "../", "~", "file:", "local:")):
        aliases = ", ".join(m.alias for m in settings.models[:20]) or "none configured"
        raise NotFound(
            f"model {quote(name)} is not an alias of this gateway ({aliases}) nor a model id or ref; "
            "GET /v1/models lists what it serves"
        )
    check_ref(name)
    return Target(ref.id, ref.id, ref.id)
