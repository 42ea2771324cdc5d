"""Registry auth (the distribution token spec): answering a ``WWW-Authenticate`` challenge with Basic
credentials, a bearer token from the realm (with Basic credentials when we have them), or an OAuth2 refresh
exchange for an identity token. Tokens are registered as secrets: never logged."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from model_provisioner.core.errors import PolicyDenied, TransferFailed
from model_provisioner.core.redact import redact_url, register_secret
from model_provisioner.net.http import read_at_most
from model_provisioner.net.registry.dockercreds import RegistryLogin

if TYPE_CHECKING:
    import httpx

_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


def answer_challenge(
    client: httpx.Client,
    registry: str,
    login: RegistryLogin | None,
    challenge: str,
    scope: str,
    check_host: Callable[[str], None],
) -> dict[str, str]:
    """The ``Authorization`` values this challenge earns, by scope."""
    import httpx  # noqa: PLC0415  # heavy: only oci:// refs and pushes get here

    auth_headers: dict[str, str] = {}
    scheme = challenge.split(" ", 1)[0].lower()
    params = dict(_CHALLENGE_RE.findall(challenge))
    if scheme == "basic":
        if login is None:
            raise PolicyDenied(
                f"registry {registry} requires a login and no credentials were found; run "
                f"`docker login {registry}` or add oci_credentials to the settings"
            )
        if login.is_identity_token:
            raise PolicyDenied(
                f"registry {registry} asks for a password, but {login.source} holds an identity token; "
                f"run `docker login {registry}` with a password or add oci_credentials to the settings"
            )
        auth_headers[scope] = "Basic " + base64.b64encode(f"{login.username}:{login.secret}".encode()).decode()
        return auth_headers
    if scheme != "bearer" or "realm" not in params:
        raise TransferFailed(f"registry {registry} sent an auth challenge this client cannot answer")
    realm = params["realm"]
    query = {"service": params.get("service", ""), "scope": params.get("scope") or scope}
    url = realm + ("&" if "?" in realm else "?") + urlencode({k: v for k, v in query.items() if v})
    check_host(url)
    if login is not None and login.is_identity_token:
        # OAuth2 (distribution's token spec): the identity token is a refresh token, exchanged by POST
        form = {
            "grant_type": "refresh_token",
            "refresh_token": login.secret,
            "client_id": "model-provisioner",
            **{k: v for k, v in query.items() if v},
        }
        request = client.build_request("POST", realm, data=form)
        auth: httpx.Auth | None = None
    else:
        request = client.build_request("GET", url)
        auth = httpx.BasicAuth(login.username, login.secret) if login is not None else None
    try:
        response = client.send(request, auth=auth, stream=True)
        try:
            raw = read_at_most(response, 1 << 20)
        finally:
            response.close()
    except httpx.HTTPError as exc:
        raise TransferFailed(
            f"registry {registry}: token service {redact_url(realm)} unreachable: {type(exc).__name__}"
        ) from None
    if response.status_code in (401, 403):
        raise PolicyDenied(
            f"registry {registry}: the token service {redact_url(realm)} refused "
            + (f"the credentials from {login.source}" if login is not None else "anonymous access")
            + f" for {query['scope']}; run `docker login {registry}` or add oci_credentials to the settings"
        )
    try:
        body = json.loads(raw)
        token = body.get("token") or body.get("access_token")
    except (ValueError, AttributeError, RecursionError):
        token = None
    if not isinstance(token, str) or not token:
        raise TransferFailed(f"registry {registry}: the token service answered without a token")
    register_secret(str(token))
    auth_headers[scope] = f"Bearer {token}"
    # a push token also covers pulls of the same repository
    if scope.endswith(":pull,push"):
        auth_headers[scope.rsplit(":", 1)[0] + ":pull"] = f"Bearer {token}"
    return auth_headers
