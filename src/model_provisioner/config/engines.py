"""Engine settings (the settings file's ``engines:`` section) and the run config of ``engine-provisioner``
(a model config with an ``engine:`` section). Errors name the file and the field (docs/engines.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from model_provisioner.core.errors import ConfigError

#: the engines a pool can run (an unknown kind is refused before anything starts)
EngineKind = Literal["llamacpp", "triton"]
ENGINE_KINDS: tuple[EngineKind, ...] = get_args(EngineKind)
PROVISIONING_MODES = ("binary", "source")
#: what ``up``/``run`` do when no engine is found: ask in a terminal (else never), install, or stop with exit 2
AutoInstall = Literal["ask", "always", "never"]
AUTO_INSTALL: tuple[AutoInstall, ...] = get_args(AutoInstall)


@dataclass(frozen=True)
class LlamaCppSettings:
    #: the llama-server binary (else ``llama-server`` on PATH, or a source build)
    binary: str | None = None
    #: ``--ctx-size`` defaults to the model's context length, capped here
    max_ctx_size: int = 4096
    ready_timeout_s: float = 60.0
    #: parallel compile jobs of a source build
    build_jobs: int = 2
    #: the most ``--threads``/``--threads-batch`` an API caller may ask for (0: this machine's CPU count)
    max_threads: int = 0
    #: the most ``--parallel`` slots an API caller may ask for
    max_parallel: int = 8


@dataclass(frozen=True)
class TritonSettings:
    binary: str | None = None
    #: extra environment of tritonserver (its libraries: LD_LIBRARY_PATH, PYTHONPATH of a python backend)
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 120.0


@dataclass(frozen=True)
class EngineSettings:
    llamacpp: LlamaCppSettings = field(default_factory=LlamaCppSettings)
    triton: TritonSettings = field(default_factory=TritonSettings)
    #: a source build may install its missing build tools with apt-get (root only)
    allow_package_installs: bool = False
    #: a supervisor gives up (state ``crashed``) after this many crashes within ``restart_window_s``
    max_restarts: int = 5
    restart_window_s: float = 300.0
    #: the longest wait between restarts (1 s, 2 s, 4 s … up to this)
    restart_backoff_max_s: float = 30.0
    #: engine pools that may run at once on this cache (``up`` past it is refused, naming this setting)
    max_pools: int = 8
    #: ``up``/``run`` with no engine found: ``ask`` (in a terminal; never otherwise), ``always``, ``never``
    auto_install: AutoInstall = "ask"
    #: the safety lint before an engine loads a model: ``enforce`` refuses what it finds, ``warn`` starts it anyway
    safety_lint: Literal["enforce", "warn"] = "enforce"
    #: the Python package index ``engines install`` finds the pinned llama.cpp sources on (else
    #: ``PIP_INDEX_URL``, else https://pypi.org/simple)
    package_index: str = ""


_LLAMACPP = {
    "binary": str,
    "max_ctx_size": int,
    "ready_timeout_s": (int, float),
    "build_jobs": int,
    "max_threads": int,
    "max_parallel": int,
}
_TRITON = {"binary": str, "env": dict, "ready_timeout_s": (int, float)}
_ENGINES = {
    "allow_package_installs": bool,
    "max_restarts": int,
    "restart_window_s": (int, float),
    "restart_backoff_max_s": (int, float),
    "max_pools": int,
    "auto_install": str,
    "package_index": str,
    "safety_lint": str,
}


def check_types(path: str, section: str, data: Any, types: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(path, section, "expected a mapping")
    for key, value in data.items():
        if key not in types:
            raise ConfigError(path, f"{section}.{key}", f"unknown key; expected one of {', '.join(sorted(types))}")
        if (isinstance(value, bool) and types[key] is not bool) or not isinstance(value, types[key]):
            raise ConfigError(path, f"{section}.{key}", f"expected {types[key]}, got {type(value).__name__}")
    return dict(data)


def parse_engine_settings(path: str, data: Any) -> EngineSettings:
    """The settings file's ``engines:`` section."""
    if not isinstance(data, dict):
        raise ConfigError(path, "engines", "expected a mapping with llamacpp, triton and general keys")
    general = check_types(path, "engines", {k: v for k, v in data.items() if k not in ENGINE_KINDS}, _ENGINES)
    llamacpp = LlamaCppSettings(**check_types(path, "engines.llamacpp", data.get("llamacpp", {}), _LLAMACPP))
    triton = check_types(path, "engines.triton", data.get("triton", {}), _TRITON)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in triton.get("env", {}).items()):
        raise ConfigError(path, "engines.triton.env", "expected a mapping of variable names to strings")
    if general.get("safety_lint", "enforce") not in ("enforce", "warn"):
        raise ConfigError(path, "engines.safety_lint", "expected enforce or warn")
    if general.get("auto_install", "ask") not in AUTO_INSTALL:
        raise ConfigError(path, "engines.auto_install", f"expected one of {', '.join(AUTO_INSTALL)}")
    return EngineSettings(llamacpp=llamacpp, triton=TritonSettings(**triton), **general)
