"""The llama.cpp provider: ``llama-server`` on a verified GGUF.

The binary comes from ``--binary``, the settings (``engines.llamacpp.binary``), ``llama-server`` on PATH,
or a source build (``build.py``). Flags are deterministic by default (``--parallel 1 --no-cont-batching
--no-webui --metrics``); the user's flags are added without duplicates (a user flag replaces the default of
the same option); ``--ngl``/``-ngl``/``--gpu-layers`` are spelled ``--n-gpu-layers``; ``--ctx-size`` defaults
to the model's context length, capped by ``engines.llamacpp.max_ctx_size``. Readiness is ``GET /health``
(503 while loading, 200 when ready); ``/metrics`` is checked once (a warning only). docs/engines.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from model_provisioner.config.engine_run import EngineRun
from model_provisioner.config.engines import EngineKind, LlamaCppSettings
from model_provisioner.core.errors import EngineNotInstalled, InvalidInput, UnsafeCachePath
from model_provisioner.core.redact import REDACTED, register_secret
from model_provisioner.engines import binaries
from model_provisioner.engines.binaries import BinaryIdentity
from model_provisioner.engines.build import BuildOptions, SourceSpec, built_binary
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.installed import find_installed
from model_provisioner.engines.kinds import EngineLaunch
from model_provisioner.engines.process import check_binary, http_status
from model_provisioner.engines.safety import check_before_start
from model_provisioner.engines.state import PoolState
from model_provisioner.storage.safefs import read_small, write_atomic
from model_provisioner.verify.results import ResolvedModel

log = logging.getLogger("model_provisioner")

DEFAULT_FLAGS = ("--parallel", "1", "--no-cont-batching", "--no-webui", "--metrics")
HOW_TO_GET = "install one with `model-provisioner engines install llamacpp`, or give the path of a llama-server binary"
#: options that take a value (so the value is kept with its option when flags are merged)
_VALUED = {
    "--parallel",
    "-np",
    "--ctx-size",
    "-c",
    "--n-gpu-layers",
    "--threads",
    "-t",
    "--batch-size",
    "-b",
    "--ubatch-size",
    "-ub",
    "--host",
    "--port",
    "--model",
    "-m",
    "--alias",
    "-a",
    "--seed",
    "-s",
    "--n-predict",
    "-n",
    "--temp",
    "--top-k",
    "--top-p",
    "--threads-batch",
    "-tb",
    "--api-key",
    "--hf-token",
    "--timeout",
    "-to",
}
_SPELLINGS = {
    "--ngl": "--n-gpu-layers",
    "-ngl": "--n-gpu-layers",
    "--gpu-layers": "--n-gpu-layers",
    "-c": "--ctx-size",
    "-np": "--parallel",
    "-t": "--threads",
    "-m": "--model",
    "-a": "--alias",
    "-nocb": "--no-cont-batching",
    "--no-ui": "--no-webui",
    "-hft": "--hf-token",
}
#: flags whose values are secrets: they reach llama-server through the variable it reads for them (so they
#: are in no command line, log header, state file or handoff) and are shown as ``***``
SECRET_FLAGS = {"--api-key": "LLAMA_API_KEY", "--hf-token": "HF_TOKEN"}
_OURS = ("--model", "--host", "--port")
#: flags that only tune the engine: the HTTP API accepts these and no others
API_SAFE_FLAGS = frozenset(
    {
        "--threads",
        "-t",
        "--threads-batch",
        "-tb",
        "--ctx-size",
        "-c",
        "--batch-size",
        "-b",
        "--ubatch-size",
        "-ub",
        "--n-gpu-layers",
        "-ngl",
        "--ngl",
        "--gpu-layers",
        "--parallel",
        "-np",
        "--seed",
        "-s",
        "--n-predict",
        "-n",
        "--temp",
        "--top-k",
        "--top-p",
        "--cont-batching",
        "--no-cont-batching",
        "--flash-attn",
        "-fa",
    }
)


def options(flags: Sequence[str]) -> list[tuple[str, str | None]]:
    """``[--opt, value]`` pairs in order, each option in its one spelling (``--opt=value`` split)."""
    out: list[tuple[str, str | None]] = []
    items = list(flags)
    i = 0
    while i < len(items):
        flag = items[i]
        value: str | None = None
        if flag.startswith("-") and "=" in flag:
            flag, value = flag.split("=", 1)
        name = _SPELLINGS.get(flag, flag)
        if value is None and (flag in _VALUED or name in _VALUED) and i + 1 < len(items):
            value = items[i + 1]
            i += 1
        out.append((name, value))
        i += 1
    return out


def server_flags(
    user_flags: Sequence[str], ctx_max: int | None, settings: LlamaCppSettings, alias: str | None = None
) -> list[str]:
    """The defaults, then the user's flags (each replacing the default of its option), then ``--ctx-size`` and
    ``--alias`` (the model's id: what OpenAI clients see as ``model``, never a cache path) unless given."""
    merged: dict[str, str | None] = dict(options(DEFAULT_FLAGS))
    for name, value in options(user_flags):
        if name in _OURS:
            raise_flag(name)
        merged[name] = value
    if "--ctx-size" not in merged:
        merged["--ctx-size"] = str(min(ctx_max or settings.max_ctx_size, settings.max_ctx_size))
    if alias is not None and "--alias" not in merged:
        merged["--alias"] = alias
    out: list[str] = []
    for name, value in merged.items():
        out.append(name)
        if value is not None:
            out.append(value)
    return out


def split_secrets(flags: Sequence[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """``flags`` as given to the engine (secret flags removed), as shown (their values ``***``), and the
    variables that carry the secret values."""
    given: list[str] = []
    shown: list[str] = []
    env: dict[str, str] = {}
    for name, value in options(flags):
        if name in SECRET_FLAGS and value is not None:
            env[SECRET_FLAGS[name]] = value
            register_secret(value)
            shown += [name, REDACTED]
            continue
        pair = [name] if value is None else [name, value]
        given += pair
        shown += pair
    return given, shown, env


def raise_flag(name: str) -> None:
    raise InvalidInput(f"flag {name} is set by model-provisioner (the verified model, --host, --port); drop it")


def argv(binary: str, model_path: str, host: str, port: int, flags: Sequence[str]) -> list[str]:
    return [binary, "--model", model_path, "--host", host, "--port", str(port), *flags]


def version(binary: str, cache_file: Path | None = None) -> str | None:
    """``llama-server --version`` (it prints ``version: N (commit)``), remembered per binary (path, size and
    mtime) in ``cache_file`` so a warm ``up`` does not run it again."""
    try:
        st = os.stat(binary)
    except OSError:
        return None
    key = f"{st.st_size}:{st.st_mtime_ns}"
    known: dict[str, dict[str, str]] = {}
    if cache_file is not None:
        try:
            known = json.loads(read_small(cache_file, 1 << 20))
        except (OSError, ValueError, UnsafeCachePath):
            known = {}
        if isinstance(known, dict) and known.get(binary, {}).get("key") == key:
            return known[binary].get("version")
    found: str | None = None
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("version:"):
            found = line.split(":", 1)[1].strip()
            break
    if cache_file is not None and found is not None and isinstance(known, dict):
        known[binary] = {"key": key, "version": found}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_file, json.dumps(known, sort_keys=True).encode())
    return found


def is_ready(host: str, port: int) -> bool:
    return http_status(host, port, "/health") == 200


def check_metrics(host: str, port: int, subject: str) -> None:
    if http_status(host, port, "/metrics") != 200:
        log.warning("%s: /metrics does not answer 200 (is --metrics set?); readiness is unaffected", subject)


class LlamaCpp:
    """``llama-server`` as an engine kind (``kinds.EngineKindSpec``)."""

    name: EngineKind = "llamacpp"
    api_safe_flags = API_SAFE_FLAGS

    def launch(
        self, host: EngineHost, run: EngineRun, resolved: ResolvedModel, port: int, cache_root: Path
    ) -> EngineLaunch:
        if resolved.format != "gguf":
            raise InvalidInput(f"{resolved.id} is {resolved.format}, not GGUF: llama-server runs GGUF models")
        settings = host.settings.engines
        check_before_start(resolved.local_path, resolved.id, settings.safety_lint)
        identity = binary_of(host, run)
        ctx_max = resolved.metadata.get("ctx_max")
        known_ctx = ctx_max if isinstance(ctx_max, int) and ctx_max > 0 else None
        merged = server_flags(run.flags, known_ctx, settings.llamacpp, alias=resolved.id)
        given, shown, secret_env = split_secrets(merged)
        return EngineLaunch(
            identity=identity,
            argv=argv(identity.path, str(resolved.local_path), run.host, port, given),
            flags=shown,
            env={**run.env, **secret_env},
            version=version(identity.path, cache_root / "engines" / "versions.json"),
            ready_timeout_s=settings.llamacpp.ready_timeout_s,
        )

    def is_ready(self, state: PoolState) -> bool:
        return is_ready(state.host, state.port)

    def after_ready(self, state: PoolState, subject: str) -> None:
        check_metrics(state.host, state.port, subject)

    def load_failures(self, log_path: Path) -> str:
        return ""


def binary_of(host: EngineHost, run: EngineRun) -> BinaryIdentity:
    """``--binary``, the settings, ``llama-server`` on PATH, the installed engine (``engines install``), in
    that order; or a build from a verified source archive (``provisioning_mode: source``)."""
    settings = host.settings.engines
    if run.provisioning_mode == "source":
        assert run.source is not None
        spec = SourceSpec(run.source, run.source_digest, run.source_subdir)
        options = BuildOptions(
            jobs=settings.llamacpp.build_jobs, allow_package_installs=settings.allow_package_installs
        )
        return built_binary(host, spec, options)
    chosen = run.binary or settings.llamacpp.binary
    if chosen:
        return binaries.given(check_binary(chosen, "llama-server", HOW_TO_GET))
    on_path = shutil.which("llama-server")
    if on_path is not None and os.access(on_path, os.X_OK):
        return binaries.given(os.path.abspath(on_path))
    found = find_installed(host, "llamacpp")
    if found is None:
        raise EngineNotInstalled(
            "no llama-server: none installed, none on PATH, none set (--binary, engines.llamacpp.binary); "
            "install it with `model-provisioner engines install llamacpp` (builds llama.cpp from its pinned "
            "sources, minutes; or --from oci://… for a prebuilt one)"
        )
    return found


KIND = LlamaCpp()
