"""Shared fixtures: isolated caches, real GGUF files, and a CLI runner that runs the installed program."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from make_tiny_gguf import write_tiny_gguf  # noqa: E402

from .helpers import wait_for  # noqa: E402

EXAMPLE_GGUF = ROOT / "examples" / "header-only-llama.gguf"

# Tests interrupt the CLI with SIGINT as a user's Ctrl-C does. A shell starts background jobs with SIGINT
# ignored, and an ignored signal stays ignored across exec (Python then installs no KeyboardInterrupt
# handler): a suite launched in the background would see every such test fail. A handler set here is reset to
# the default in every child at exec, so the programs under test get SIGINT as a user's terminal delivers it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The suite is reproducible: hypothesis draws the same examples every run (a CI run is never red because a
# new random example turned up). Explore with HYPOTHESIS_PROFILE=explore (fresh random examples), and
# run fuzz/fuzz_parsers.py longer by hand.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("default", derandomize=True)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# ------------------------------------------------------------------------------------------- the fast tier
#: fixtures that start a server installed from Debian (nginx, docker-registry, squid), moto's S3 server, the
#: API server, llama-server or tritonserver, or that need root: a test using one is ``slow``
SLOW_FIXTURES = frozenset(
    {
        "nginx",
        "registry",
        "registry_auth",
        "registry_token",
        "s3_server",
        "s3",
        "squid",
        "squid_auth",
        "api_factory",
        "llama_server",
        "llamacpp_sdist",
        "tiny_model",
        "engines",
        "triton",
        "small_fs",
    }
)
#: what a test body starts itself that puts it in the slow tier (the same servers, root-only tools)
SLOW_BODY = re.compile(
    r"servers\.(nginx|registry|squid|s3|token_server)|capped_nginx|Registry\(|Squid\(|setpriv|useradd|mount"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` what the fast tier (``./scripts/test.sh --fast``, docs/development.md) leaves out: tests
    that need a server from Debian or PyPI's heavier ones, an engine, or root, besides those marked by hand
    (more than a few seconds each)."""
    for item in items:
        if item.get_closest_marker("slow") is not None or not isinstance(item, pytest.Function):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        try:
            body = inspect.getsource(item.function)
        except (OSError, TypeError):
            body = ""
        if fixtures & SLOW_FIXTURES or SLOW_BODY.search(body):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (
        "MODEL_PROVISIONER_CACHE",
        "MODEL_PROVISIONER_OFFLINE",
        "HF_HUB_OFFLINE",
        "MODEL_PROVISIONER_SETTINGS",
        "MODEL_PROVISIONER_FAILPOINTS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    return write_tiny_gguf(tmp_path / "models" / "tiny.gguf")


@pytest.fixture
def make_gguf(tmp_path: Path) -> Any:
    def make(name: str = "m.gguf", **kwargs: Any) -> Path:
        path = tmp_path / "models" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_tiny_gguf(path, **kwargs)

    return make


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(
    *args: str,
    cache_dir: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    **kwargs: Any,
) -> CliResult:
    cmd = [sys.executable, "-m", "model_provisioner"]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, **kwargs
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(cache_dir: Path) -> Any:
    def run(*args: str, **kwargs: Any) -> CliResult:
        return run_cli(*args, cache_dir=cache_dir, **kwargs)

    return run


@pytest.fixture
def provisioner(cache_dir: Path) -> Iterator[Any]:
    from model_provisioner import ModelProvisioner

    with ModelProvisioner.file_only(cache_dir) as prov:
        yield prov


# ------------------------------------------------------------------------------------ network fixtures
@pytest.fixture
def fileserver(tmp_path: Path) -> Iterator[Any]:
    from .servers.fileserver import FileServer

    server = FileServer(tmp_path / "www")
    yield server
    server.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Any]:
    from .servers.hub import FakeHub

    server = FakeHub(tmp_path / "hub")
    yield server
    server.close()


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from .servers.nginx import Nginx

    root = tmp_path_factory.mktemp("nginx-root")
    server = Nginx(root, tmp_path_factory.mktemp("nginx-work"))
    yield server
    server.close()


FAST_TRANSFER = {
    "attempts": 4,
    "backoff_base_s": 0.02,
    "backoff_max_s": 0.2,
    "stall_timeout_s": 2.0,
    "connect_timeout_s": 2.0,
    "mirror_attempts": 1,
}


@pytest.fixture
def settings_file(tmp_path: Path) -> Any:
    """Write a settings file (fast retries by default) and return its path; use with env
    MODEL_PROVISIONER_SETTINGS for CLI runs."""

    def write(**sections: Any) -> Path:
        data = {"transfer": {**FAST_TRANSFER, **sections.pop("transfer", {})}, **sections}
        path = tmp_path / "settings.json"
        path.write_text(json.dumps(data))
        return path

    return write


@pytest.fixture
def net(cache_dir: Path, settings_file: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A provisioner factory for network tests: settings file + env, like a user would configure it."""
    from model_provisioner import ModelProvisioner, Settings

    made: list[Any] = []

    def make(hub_url: str | None = None, **sections: Any) -> Any:
        path = settings_file(**sections)
        monkeypatch.setenv("MODEL_PROVISIONER_SETTINGS", str(path))
        if hub_url:
            monkeypatch.setenv("HF_ENDPOINT", hub_url)
        prov = ModelProvisioner(Settings.from_env(cache_dir=cache_dir))
        made.append(prov)
        return prov

    yield make
    for prov in made:
        prov.close()


class SocketGuard:
    """Counts (and refuses) every outgoing connection made in this process."""

    def __init__(self) -> None:
        self.attempts: list[Any] = []


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> SocketGuard:
    import socket

    guard = SocketGuard()
    real_connect = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            guard.attempts.append(address)
            raise OSError("socket guard: no network allowed in this test")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(socket.socket(), a[0]))
    return guard


# ------------------------------------------------------------------------------ registries (issue 4)
@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's docker-registry, anonymous."""
    from .servers.registry import Registry

    server = Registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.close()


REGISTRY_USER, REGISTRY_PASSWORD = "team", "registry-pass-Secr3t-value"


@pytest.fixture(scope="session")
def registry_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's docker-registry with htpasswd Basic auth (user REGISTRY_USER)."""
    from .servers.registry import Registry

    server = Registry(tmp_path_factory.mktemp("registry-auth"), users={REGISTRY_USER: REGISTRY_PASSWORD})
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from .servers.s3 import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.close()


@pytest.fixture
def s3(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The moto server with its credentials and endpoint in the environment (boto3's standard chain)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return s3_server


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """docker-registry with Bearer token auth; the token service runs on another host (127.0.0.2)."""
    from .servers.registry import Registry
    from .servers.token_server import TokenServer

    tokens = TokenServer(tmp_path_factory.mktemp("token"), {REGISTRY_USER: REGISTRY_PASSWORD})
    server = Registry(tmp_path_factory.mktemp("registry-token"), token=tokens)
    server.tokens = tokens  # type: ignore[attr-defined]
    yield server
    server.close()
    tokens.close()


# ---------------------------------------------------------------------------------- the HTTP API server
TOKEN = "s3cr3t-api-token-value"


class Api:
    def __init__(self, proc: subprocess.Popen[str], url: str, stderr_path: Path, token: str | None) -> None:
        self.proc, self.url, self.stderr_path = proc, url, stderr_path
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url, headers=headers, timeout=60)

    def logs(self) -> str:
        return self.stderr_path.read_text()


@pytest.fixture
def api_factory(tmp_path: Path, cache_dir: Path) -> Iterator[Any]:
    started: list[Api] = []

    def start(
        *,
        token: str | None = TOKEN,
        settings: dict[str, Any] | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> Api:
        # the test servers all listen on loopback, which the API refuses to reach by default (SSRF)
        data = {
            "transfer": FAST_TRANSFER,
            "log_format": "json",
            "api_allow_networks": ["127.0.0.0/8"],
            **(settings or {}),
        }
        settings_path = tmp_path / f"api-settings-{len(started)}.json"
        settings_path.write_text(json.dumps(data))
        from .servers.nginx import free_port

        port = free_port()
        full_env = {**os.environ, "MODEL_PROVISIONER_SETTINGS": str(settings_path), **(env or {})}
        if token:
            full_env["MODEL_PROVISIONER_API_TOKEN"] = token
        stderr_path = tmp_path / f"api-{port}.log"
        with open(stderr_path, "w") as log_file:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "model_provisioner",
                    "--cache-dir",
                    str(cache_dir),
                    "serve",
                    "--host",
                    host,
                    "--port",
                    str(port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=full_env,
                text=True,
            )
        api = Api(proc, f"http://127.0.0.1:{port}", stderr_path, token)

        def healthy() -> bool:
            assert proc.poll() is None, api.logs()
            try:
                return bool(api.client.get("/healthz").status_code == 200)
            except httpx.HTTPError:
                return False

        wait_for(healthy, 30, "the API server to answer /healthz")
        started.append(api)
        return api

    yield start
    if started:  # engines an API started outlive it by design (detached supervisors): stopped here, test or not
        run_cli("-q", "down", "--all", cache_dir=cache_dir, timeout=60)
    for api in started:
        api.proc.terminate()
        try:
            api.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            api.proc.kill()
        api.client.close()


# ------------------------------------------------------------------------------------- disk full
@pytest.fixture
def small_fs(tmp_path: Path) -> Any:
    """A 6 MiB tmpfs mounted for this test (root only: skipped, with the reason shown, otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; the disk-full tests run in CI as root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")

    class SmallFs:
        path = mount

        @staticmethod
        def grow(size: str) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    yield SmallFs
    subprocess.run(["umount", "-l", str(mount)], check=False)


# ------------------------------------------------------------------- assets fetched by scripts/test.sh
@pytest.fixture(scope="session")
def llamacpp_sdist() -> Path:
    """The llama-cpp-python sdist (scripts/fetch_test_assets.py puts it in the cache; run it if missing)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import fetch_test_assets

    path: Path = fetch_test_assets.CACHE / fetch_test_assets.SDIST
    if not path.is_file():
        assert fetch_test_assets.main() == 0, "could not fetch the llama-cpp-python sdist from PyPI"
    return path


# ------------------------------------------------------------------------------ signing keys
@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """An elliptic-curve key pair as `model_signing sign key` uses: (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "signer.pem", tmp_path / "signer.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


# ------------------------------------------------------------------------------------ engine fixtures
sys.path.insert(0, str(ROOT / "scripts"))
import build_test_engines as build_test_engines  # noqa: E402  # re-exported for the engine tests


@pytest.fixture(scope="session")
def llama_server(llamacpp_sdist: Path) -> str:
    """The llama-server binary (built once by the test command; built here only if that step was skipped)."""
    from model_provisioner import ModelProvisioner, Settings
    from model_provisioner.engines.build import SourceSpec, built_binary

    spec = SourceSpec(
        f"file:{llamacpp_sdist}",
        f"sha256:{build_test_engines.fetch_test_assets.SDIST_SHA256}",
        build_test_engines.SOURCE_SUBDIR,
    )
    with ModelProvisioner(Settings.from_env(cache_dir=build_test_engines.ENGINE_CACHE)) as prov:
        return built_binary(prov, spec).path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped runnable example (examples/tiny-runnable-llama.gguf)."""
    model: Path = build_test_engines.runnable_model(tmp_path_factory.mktemp("runnable"))
    return model


@pytest.fixture
def engines(cache_dir: Path) -> Any:
    """Run the CLI against this test's cache; every pool is stopped when the test ends."""

    def run(*args: str, **kwargs: Any) -> Any:
        return run_cli(*args, cache_dir=cache_dir, timeout=kwargs.pop("timeout", 120), **kwargs)

    yield run
    run_cli("-q", "down", "--all", cache_dir=cache_dir, timeout=60)


def alive(pid: int) -> bool:
    """The process runs (a zombie has exited: only its parent has not reaped it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
