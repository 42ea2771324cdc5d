"""Settings (how the provisioner runs) and model config files (what to provision).

Settings come from, in increasing priority: defaults, a settings file (YAML or JSON, path in
``MODEL_PROVISIONER_SETTINGS``), a few environment variables, explicit arguments. Only the handful of
variables users expect are read from the environment; everything else lives in the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from model_provisioner.config.engines import EngineSettings, parse_engine_settings
from model_provisioner.config.gateway import GatewaySettings, parse_gateway
from model_provisioner.config.policy import Policy, policy_from
from model_provisioner.config.proxy import ProxySettings
from model_provisioner.config.registry_mirrors import RegistryMirror, parse_registry_mirrors
from model_provisioner.config.sections import HttpsMirror, parse_mirrors, parse_oci_credentials
from model_provisioner.config.signatures import SignaturePolicy, parse_signatures
from model_provisioner.core.errors import ConfigError, NotFound
from model_provisioner.core.redact import register_secret
from model_provisioner.core.units import parse_size

ENV_CACHE = "MODEL_PROVISIONER_CACHE"
ENV_OFFLINE = "MODEL_PROVISIONER_OFFLINE"
ENV_SETTINGS = "MODEL_PROVISIONER_SETTINGS"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/models`` (an absolute XDG_CACHE_HOME, as the XDG base directory spec says), else
    ``~/.cache/models``."""
    xdg = (os.environ if env is None else env).get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "models"
    return Path(os.path.expanduser("~/.cache/models"))


@dataclass(frozen=True)
class TransferSettings:
    connections: int = 8
    #: the fan-out controller picks how many of ``connections`` to use (transfer/fanout.py); false: all of them
    adaptive_connections: bool = True
    parallel_threshold_bytes: int = 64 << 20
    parallel_chunk_min_bytes: int = 8 << 20
    #: when the first range arrives at least this fast, the rest comes in one stream (parallel ranges cost
    #: CPU; they pay off only when a single connection is capped or latency-bound)
    single_stream_enough_bytes_per_s: float = 400e6
    attempts: int = 5
    mirror_attempts: int = 2
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    retry_after_max_s: float = 60.0
    stall_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    ca_bundle: str | None = None
    #: follow a redirect from https to plain http (never with credentials); off: such a redirect is an error
    allow_https_downgrade: bool = False
    #: a connection delivering less than this over ``min_rate_window_s`` is treated as stalled (slow-loris:
    #: one byte every few seconds is never a read timeout); 0 turns the floor off
    min_rate_bytes_per_s: float = 1024.0
    min_rate_window_s: float = 60.0
    #: no file may take longer than this in all, retries included (None: no deadline)
    file_deadline_s: float | None = 6 * 3600.0
    #: a compressed tar layer may unpack to at most this many times its size (decompression bombs)
    max_unpack_ratio: float = 100.0
    #: a pull-through registry mirror that does not hold a blob yet is polled for up to this long while it fills
    #: its cache, rather than read through (which costs its upstream a second copy); 0: read through at once
    mirror_fill_wait_s: float = 120.0
    #: forward proxies, from HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY (``config/proxy.py``)
    proxy: ProxySettings = field(default_factory=ProxySettings)


@dataclass(frozen=True)
class Settings:
    cache_dir: Path = field(default_factory=default_cache_dir)
    offline: bool = False
    #: global limit on concurrent fetches (and first-time hashing) across threads and processes
    max_parallel_fetches: int = 4
    #: how long a waiter waits for another process fetching the same model
    lock_timeout_s: float = 6 * 3600.0
    #: last_used timestamps are written at most this often per entry (keeps the warm path read-only)
    touch_interval_ms: int = 1000
    transfer: TransferSettings = field(default_factory=TransferSettings)
    policy: Policy = field(default_factory=Policy)
    #: alternative Hub endpoints, tried in order before ``hf_endpoint``
    hf_mirrors: tuple[str, ...] = ()
    https_mirrors: tuple[HttpsMirror, ...] = ()
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    hf_token: str | None = field(default=None, repr=False)
    #: how long a Hub's yes to "may this token read this private repo" is remembered (pipeline/access.py)
    access_check_ttl_s: float = 300.0
    #: a transformers repo that needs custom code is provisioned (flagged) only when this is true
    allow_remote_code: bool = False
    #: the same for requests through the HTTP API (its callers may not be the operator): off by default
    api_allow_remote_code: bool = False
    #: a transformers repo with pickle weights only (pytorch_model.bin…) is fetched only when this is true; their
    #: imports are then checked without unpickling (formats/pickle_scan.py)
    allow_pickle: bool = False
    #: size budget of the blob store: least recently used entries are evicted after each ensure
    max_cache_bytes: int | None = None
    #: before downloading a blob, look for it in huggingface_hub / Ollama caches (verified, then linked)
    adopt_caches: bool = False
    #: "text" (default) or "json" (one JSON object per line, with the audit fields)
    log_format: str = "text"
    #: the CLI writes its Prometheus metrics here after each command (node_exporter textfile collector)
    metrics_textfile: str | None = None
    #: without a terminal, a download prints a progress line this often (seconds; 0: never)
    progress_interval_s: float = 10.0
    #: HTTP API: bearer token (env MODEL_PROVISIONER_API_TOKEN; never in the settings file's logs)
    api_token: str | None = field(default=None, repr=False)
    #: HTTP API: file: refs are accepted only under these directories
    api_file_roots: tuple[str, ...] = ()
    #: HTTP API: requests may not make the server connect to internal addresses (loopback, private,
    #: link-local, metadata) except these CIDRs, host globs or exact host:port (the operator's own endpoints
    #: from these settings are always admitted)
    api_allow_networks: tuple[str, ...] = ()
    #: HTTP API: request bodies larger than this are refused (413)
    api_max_body_bytes: int = 64 * 1024
    #: HTTP API: synchronous (wait=true) remote ensures at once; more get 503 + Retry-After (jobs queue instead).
    #: The server runs synchronous requests on 40 threads: this keeps 8 for every other request
    api_max_sync_fetches: int = 32
    #: HTTP API: background jobs running at once against one origin (the rest wait without holding a worker)
    api_jobs_per_origin: int = 2
    #: background jobs not finished yet (running or queued behind their origin); more are 503
    api_max_queued_jobs: int = 1000
    #: HTTP API: ensure requests naming an engine write its handoff and a provenance line here
    api_handoff_dir: str | None = None
    #: OCI registries reached over plain http (loopback registries always are), like Docker's insecure registries
    oci_plain_http: tuple[str, ...] = ()
    #: OCI Basic credentials per registry host: {host: (username, password)}; ~/.docker/config.json otherwise
    oci_credentials: Mapping[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    #: S3: endpoint for S3-compatible stores (MinIO, Ceph); AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL also work
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    #: team mirrors (roots written by ``push``), tried in order before the origin of any remote ref
    model_mirrors: tuple[str, ...] = ()
    #: a model becomes Active only with a model-signing signature that verifies with this key
    require_signature: bool = False
    #: the signature policy by scope, and its trusted keys (docs/verification.md, "Signature policy")
    signatures: SignaturePolicy = field(default_factory=SignaturePolicy)
    signature_public_key: str | None = None
    #: set for requests through the HTTP API (never from a settings file): file: refs must lie under
    #: ``api_file_roots``, reached without symbolic links, and be the very file that is hashed
    confine_files: bool = False
    #: engines: binaries, readiness timeouts, supervision (docs/engines.md)
    engines: EngineSettings = field(default_factory=EngineSettings)
    #: the OpenAI-compatible endpoint of ``serve`` and its ``models:`` list (docs/engines.md)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    #: OCI registry mirrors (containerd hosts.toml semantics), tried before the registry itself
    registry_mirrors: Mapping[str, tuple[RegistryMirror, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_parallel_fetches < 1:
            raise ConfigError("settings", "max_parallel_fetches", "must be at least 1")
        if self.lock_timeout_s <= 0:
            raise ConfigError("settings", "lock_timeout_s", "must be positive")
        if self.transfer.connections < 1:
            raise ConfigError("settings", "transfer.connections", "must be at least 1")
        if self.transfer.attempts < 1:
            raise ConfigError("settings", "transfer.attempts", "must be at least 1")
        if self.log_format not in ("text", "json"):
            raise ConfigError("settings", "log_format", f"expected text or json, got {self.log_format!r}")
        if self.offline and not self.policy.offline:
            object.__setattr__(self, "policy", replace(self.policy, offline=True))

        register_secret(self.hf_token)
        register_secret(self.api_token)
        for _user, password in self.oci_credentials.values():
            register_secret(password)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        settings_file = env.get(ENV_SETTINGS)
        values: dict[str, Any] = _load_settings_file(settings_file) if settings_file else {}
        values.update(_from_variables(env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        proxy = ProxySettings.from_environ(env)
        if proxy != ProxySettings():
            values["transfer"] = replace(values.get("transfer", TransferSettings()), proxy=proxy)
        if "cache_dir" in values:
            values["cache_dir"] = Path(os.path.expanduser(str(values["cache_dir"]))).absolute()
        else:
            values["cache_dir"] = default_cache_dir(env)
        if "hf_endpoint" in values:
            values["hf_endpoint"] = str(values["hf_endpoint"]).rstrip("/")
        try:
            return replace(cls(), **values)
        except ConfigError as exc:  # a value the file gave: name the file, not "settings"
            if settings_file and exc.path == "settings":
                raise ConfigError(settings_file, exc.field, exc.problem) from None
            raise


_TOP_TYPES: dict[str, type | tuple[type, ...]] = {
    "cache_dir": str,
    "offline": bool,
    "max_parallel_fetches": int,
    "lock_timeout_s": (int, float),
    "touch_interval_ms": int,
    "hf_endpoint": str,
    "allow_remote_code": bool,
    "access_check_ttl_s": (int, float),
    "api_allow_remote_code": bool,
    "allow_pickle": bool,
    "max_cache_bytes": (int, str),
    "adopt_caches": bool,
    "log_format": str,
    "metrics_textfile": str,
    "progress_interval_s": (int, float),
    "api_token": str,
    "api_file_roots": list,
    "api_allow_networks": list,
    "api_max_body_bytes": int,
    "api_max_sync_fetches": int,
    "api_jobs_per_origin": int,
    "api_max_queued_jobs": int,
    "api_handoff_dir": str,
    "oci_plain_http": list,
    "s3_endpoint_url": str,
    "s3_region": str,
    "require_signature": bool,
    "signature_public_key": str,
}
_TRANSFER_TYPES: dict[str, type | tuple[type, ...]] = {
    "connections": int,
    "adaptive_connections": bool,
    "parallel_threshold_bytes": int,
    "parallel_chunk_min_bytes": int,
    "single_stream_enough_bytes_per_s": (int, float),
    "attempts": int,
    "mirror_attempts": int,
    "backoff_base_s": (int, float),
    "backoff_max_s": (int, float),
    "retry_after_max_s": (int, float),
    "stall_timeout_s": (int, float),
    "connect_timeout_s": (int, float),
    "ca_bundle": str,
    "allow_https_downgrade": bool,
    "min_rate_bytes_per_s": (int, float),
    "min_rate_window_s": (int, float),
    "file_deadline_s": (int, float),
    "max_unpack_ratio": (int, float),
    "mirror_fill_wait_s": (int, float),
}
_POLICY_TYPES: dict[str, type | tuple[type, ...]] = {
    "allow": list,
    "deny": list,
    "allow_hosts": list,
    "deny_hosts": list,
    "deny_networks": list,
    "label": str,
}


def _typed(path: str, section: str, data: Any, types: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(path, section or None, "expected a mapping")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{section}.{key}" if section else key
        if key not in types:
            raise ConfigError(path, name, f"unknown setting; known: {', '.join(sorted(types))}")
        expected = types[key]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            label = getattr(expected, "__name__", "a number")
            raise ConfigError(path, name, f"expected {label}, got {value!r}")
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(path, name, "expected a list of glob strings")
            value = tuple(value)
        out[key] = value
    return out


def _from_variables(env: Mapping[str, str]) -> dict[str, Any]:
    """What the environment sets (over the settings file): cache, offline, Hub endpoint and token, API token."""
    values: dict[str, Any] = {}
    if env.get(ENV_CACHE):
        values["cache_dir"] = env[ENV_CACHE]
    if _truthy(env.get(ENV_OFFLINE)) or _truthy(env.get("HF_HUB_OFFLINE")):
        values["offline"] = True
    if env.get("HF_ENDPOINT"):
        values["hf_endpoint"] = env["HF_ENDPOINT"]
    if env.get("MODEL_PROVISIONER_API_TOKEN"):
        values["api_token"] = env["MODEL_PROVISIONER_API_TOKEN"]
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        register_secret(env.get(name))
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        values["hf_token"] = token.strip()
    return values


def _load_settings_file(path: str) -> dict[str, Any]:
    data = read_mapping(path)
    sections = {
        "transfer",
        "policy",
        "mirrors",
        "oci_credentials",
        "engines",
        "registry_mirrors",
        "gateway",
        "models",
        "signatures",
    }
    out = _typed(path, "", {k: v for k, v in data.items() if k not in sections}, _TOP_TYPES)
    if isinstance(out.get("max_cache_bytes"), str):
        try:
            out["max_cache_bytes"] = parse_size(out["max_cache_bytes"])
        except ValueError as exc:
            raise ConfigError(path, "max_cache_bytes", str(exc)) from None
    if "transfer" in data:
        out["transfer"] = TransferSettings(**_typed(path, "transfer", data["transfer"], _TRANSFER_TYPES))
    if "registry_mirrors" in data:
        out["registry_mirrors"] = parse_registry_mirrors(path, data["registry_mirrors"])
    if "engines" in data:
        out["engines"] = parse_engine_settings(path, data["engines"])
    if "signatures" in data:
        out["signatures"] = parse_signatures(path, data["signatures"])
    if "gateway" in data or "models" in data:
        out["gateway"] = parse_gateway(path, data.get("gateway", {}), data.get("models"))
    if "policy" in data:
        out["policy"] = policy_from(path, _typed(path, "policy", data["policy"], _POLICY_TYPES))
    if "oci_credentials" in data:
        out["oci_credentials"] = parse_oci_credentials(path, data["oci_credentials"])
    if "mirrors" in data:
        out.update(parse_mirrors(path, data["mirrors"]))
    return out


def read_mapping(path: str) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"config {path}: file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    data: Any
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except RecursionError:
            raise ConfigError(path, None, "invalid JSON: nested too deeply") from None
        except ValueError as exc:
            raise ConfigError(path, None, f"invalid JSON: {exc}") from None
    else:
        import yaml  # noqa: PLC0415  # lazy: only config files need it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(path, None, f"invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, f"expected a mapping of fields, got {type(data).__name__}")
    return data


def api_settings(settings: Settings) -> Settings:
    """The settings requests through the HTTP API run under: the same, except that a caller cannot make the
    server connect to internal addresses (SSRF) other than ``api_allow_networks`` and the endpoints the
    operator configured here (Hub endpoint and mirrors, https and registry mirrors, team mirrors, S3)."""
    registry_mirrors = [m.url for mirrors in settings.registry_mirrors.values() for m in mirrors]
    urls = [settings.hf_endpoint, *settings.hf_mirrors, *(m.mirror for m in settings.https_mirrors), *registry_mirrors]
    if settings.s3_endpoint_url:
        urls.append(settings.s3_endpoint_url)
    allowed = list(settings.api_allow_networks)
    for url in urls:
        parts = urlsplit(url)
        try:
            port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
        except ValueError:
            continue
        if parts.hostname and port:
            allowed.append(f"{parts.hostname}:{port}")
    for root in settings.model_mirrors:
        if root.startswith("oci://"):
            registry = root[len("oci://") :].split("/", 1)[0]
            allowed.append(registry if ":" in registry else f"{registry}:443")
    policy = replace(settings.policy, block_internal=True, internal_allow=tuple(allowed))
    return replace(settings, policy=policy, confine_files=True, allow_remote_code=settings.api_allow_remote_code)
