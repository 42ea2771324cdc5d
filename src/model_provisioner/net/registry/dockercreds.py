"""Registry logins as Docker keeps them: ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``).

The Docker CLI's order, which podman, oras and crane follow too:

1. ``credHelpers[registry]``: the named helper ``docker-credential-<name>`` (ECR, GCR/Artifact Registry, ACR,
   the OS keychains) is run as ``docker-credential-<name> get`` with the server URL on stdin, and answers
   ``{"ServerURL": ..., "Username": ..., "Secret": ...}``;
2. ``credsStore``: the same protocol with one helper for every registry;
3. ``auths[registry]``: ``auth`` (base64 of ``user:password``) or ``username``/``password`` in the file.

A helper's answer with the user name ``<token>`` is an identity token (an OAuth2 refresh token): it is not a
password, and is exchanged at the registry's token realm (``grant_type=refresh_token``) instead of being sent
as Basic credentials. Helpers are run only when a registry asks for a login, never on a warm path.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import ConfigError, PolicyDenied
from model_provisioner.core.redact import redact_text, register_secret

IDENTITY_TOKEN_USER = "<token>"
_HELPER_TIMEOUT_S = 60.0
_DOCKER_HUB_SERVER = "https://index.docker.io/v1/"


@dataclass(frozen=True)
class RegistryLogin:
    username: str
    secret: str = field(repr=False)
    #: where it came from, for messages: never the secret itself
    source: str = ""

    def __post_init__(self) -> None:

        register_secret(self.secret)  # whatever it is, it never appears in a message

    @property
    def is_identity_token(self) -> bool:
        return self.username == IDENTITY_TOKEN_USER


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")) / "config.json"


def _server_keys(registry: str) -> list[str]:
    """The spellings a registry goes by in ``auths`` and ``credHelpers`` (Docker Hub has its own)."""
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return [_DOCKER_HUB_SERVER, "docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"]


def docker_login(registry: str) -> RegistryLogin | None:
    """The login the Docker config gives for ``registry``, or None: ``credHelpers[host]``, then ``credsStore``,
    then ``auths`` (Docker's order)."""
    path = docker_config_path()
    data = _read_config(path)
    if data is None:
        return None
    keys = _server_keys(registry)
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        for key in keys:
            if isinstance(helpers.get(key), str) and helpers[key]:
                return _from_helper(helpers[key], _helper_server(registry, keys), path, "credHelpers")
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        login = _from_helper(store, _helper_server(registry, keys), path, "credsStore")
        if login is not None:
            return login
    auths = data.get("auths")
    if isinstance(auths, dict):
        for key in keys:
            entry = auths.get(key)
            if isinstance(entry, dict):
                login = _from_auths_entry(entry, path)
                if login is not None:
                    return login
    return None


def _read_config(path: Path) -> dict[str, Any] | None:
    """The Docker config as a JSON object, or None when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), None, f"cannot be read as JSON ({type(exc).__name__}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "expected a JSON object; fix or remove it")
    return data


def _from_auths_entry(entry: dict[str, object], path: Path) -> RegistryLogin | None:
    source = f"the Docker config file {path}"
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        return RegistryLogin(IDENTITY_TOKEN_USER, str(entry["identitytoken"]), source)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, _, password = base64.b64decode(auth).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return RegistryLogin(user, password, source)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return RegistryLogin(str(entry["username"]), str(entry["password"]), source)
    return None


def _helper_server(registry: str, keys: list[str]) -> str:
    """What a helper is asked for: the host as ``docker login`` stored it (Docker Hub's legacy URL)."""
    return keys[0] if keys[0] == _DOCKER_HUB_SERVER else registry


def _from_helper(name: str, server: str, path: Path, field_name: str) -> RegistryLogin | None:
    """``docker-credential-<name> get``; None when the helper has nothing for ``server``."""
    program = f"docker-credential-{name}"
    executable = shutil.which(program)
    if executable is None:
        raise ConfigError(
            str(path),
            field_name,
            f"names the credential helper {program}, which is not on PATH; install it or remove the entry",
        )
    try:
        done = subprocess.run(
            [executable, "get"], input=server, capture_output=True, text=True, timeout=_HELPER_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise PolicyDenied(
            f"credential helper {program} did not answer for {server} within {_HELPER_TIMEOUT_S:.0f} s"
        ) from None
    except OSError as exc:
        raise PolicyDenied(f"credential helper {program} could not run for {server}: {exc.strerror}") from None
    if done.returncode != 0:
        said = (done.stdout.strip() or done.stderr.strip()).splitlines()
        if said and "credentials not found" in said[0].lower():
            return None  # the helpers' documented "no login for this server"
        first = redact_text(said[0][:200]) if said else f"exit code {done.returncode}"
        raise PolicyDenied(
            f"credential helper {program} failed for {server}: {first}; check its login (e.g. log in again)"
        )
    try:
        answer = json.loads(done.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise PolicyDenied(f"credential helper {program} answered for {server} without Username and Secret") from None
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    return RegistryLogin(username, secret, f"the credential helper {program}")
