"""The Triton provider: ``tritonserver --model-repository=<our verified view>``.

Only its HTTP endpoint is opened (on the pool's port; gRPC and the metrics port are off, so two pools never
collide). Readiness is ``/v2/health/ready`` plus ``/v2/models/<name>/ready`` for every model of the
repository; a model that failed to load is an error naming it and Triton's reason (from the repository
index). The binary's libraries (the ``nvidia-pytriton`` wheel's, for instance) come from the settings'
``engines.triton.env`` (docs/engines.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from model_provisioner.config.engine_run import EngineRun
from model_provisioner.config.engines import EngineKind
from model_provisioner.core.errors import EngineFailed, InvalidInput, PolicyDenied
from model_provisioner.engines import binaries
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.kinds import EngineLaunch
from model_provisioner.engines.process import check_binary, engine_environment, http_status, read_log_tail
from model_provisioner.engines.state import PoolState
from model_provisioner.verify.results import ResolvedModel

HOW_TO_GET = (
    "install Triton Inference Server (or the nvidia-pytriton wheel, which ships tritonserver), put it on PATH or "
    "set engines.triton.binary, and its libraries in engines.triton.env"
)


#: backends and platforms that load weights only; any other (``python``, a custom backend) runs code
CODE_FREE_BACKENDS = frozenset(
    {
        "onnxruntime",
        "onnxruntime_onnx",
        "tensorrt",
        "tensorrt_plan",
        "pytorch",
        "pytorch_libtorch",
        "tensorflow",
        "tensorflow_savedmodel",
        "tensorflow_graphdef",
        "openvino",
        "fil",
        "ensemble",
    }
)
#: files Triton runs or loads as code from a model repository (a python model, a backend library beside it)
_CODE_SUFFIXES = (".py", ".so")
_MAX_FILES = 100_000


def remote_code(resolved: ResolvedModel) -> list[str]:
    """What in a verified Triton repository would run code inside tritonserver: models whose backend is not
    code-free (``name (backend)``) and code files anywhere in it."""
    found: list[str] = []
    models = resolved.metadata.get("models")
    for model in models if isinstance(models, list) else []:
        if not isinstance(model, dict):
            continue
        kind = str(model.get("backend") or model.get("platform") or "")
        if kind and kind not in CODE_FREE_BACKENDS:
            found.append(f"{model.get('name')} (backend {kind})")
    seen = 0
    for folder, _dirs, names in os.walk(resolved.local_path):
        for name in names:
            seen += 1
            if name.endswith(_CODE_SUFFIXES) or ".so." in name:
                found.append(os.path.relpath(os.path.join(folder, name), resolved.local_path))
        if seen > _MAX_FILES:
            break
    return found


def check_no_remote_code(resolved: ResolvedModel, allowed: bool) -> None:
    """Model code is remote code: refused unless the setting in force allows it."""
    if allowed:
        return
    found = remote_code(resolved)
    if found:
        raise PolicyDenied(
            f"{resolved.id}: this Triton repository runs code inside tritonserver ({', '.join(found[:5])}); "
            "review it, then set allow_remote_code: true in the settings (api_allow_remote_code for the HTTP API)"
        )


def argv(binary: str, repository: str, host: str, port: int, flags: list[str]) -> list[str]:
    return [
        binary,
        f"--model-repository={repository}",
        f"--http-address={host}",
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        *flags,
    ]


def version(binary: str, env: dict[str, str]) -> str | None:
    """Triton prints its version in the first lines of its log; ``--help`` is the cheap way to run it."""
    try:
        done = subprocess.run(
            [binary, "--help"], capture_output=True, text=True, timeout=30, check=False, env=engine_environment(env)
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (done.stdout + done.stderr).splitlines():
        if "version" in line.lower():
            return line.strip()[:120]
    return None


def is_ready(host: str, port: int, models: list[str]) -> bool:
    if http_status(host, port, "/v2/health/ready") != 200:
        return False
    return all(http_status(host, port, f"/v2/models/{name}/ready") == 200 for name in models)


def repository_index(host: str, port: int) -> list[dict[str, Any]]:
    import http.client  # noqa: PLC0415  # heavy: ~12 ms of start-up (email parsing), only after Triton is ready

    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("POST", "/v2/repository/index", body=b"{}", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read() or b"[]")
    except (OSError, ValueError, http.client.HTTPException):
        return []
    finally:
        conn.close()
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def check_models(host: str, port: int, models: list[str], subject: str) -> None:
    """Every model of the repository loaded; otherwise one error naming each failed model and its reason."""
    failed = [
        f"{item.get('name')} ({item.get('reason') or item.get('state')})"
        for item in repository_index(host, port)
        if item.get("name") in models and item.get("state") != "READY"
    ]
    if failed:
        raise EngineFailed(f"{subject}: models failed to load: {'; '.join(failed)}")


_FAILED_RE = re.compile(r"""failed to load '([^']+)' version (\S+): ([^"\\]*)""")


def load_failures(log_path: Path) -> str:
    """The models Triton's log says failed to load, each with its reason (``name (reason)``; empty if none)."""
    text = read_log_tail(log_path, 262144).decode("utf-8", "replace")
    found = dict.fromkeys(f"{m.group(1)} ({m.group(3).strip()[:200]})" for m in _FAILED_RE.finditer(text))
    return "; ".join(found)


class Triton:
    """``tritonserver`` as an engine kind (``kinds.EngineKindSpec``)."""

    name: EngineKind = "triton"
    #: none: Triton's flags name directories (backends, repositories) or open ports
    api_safe_flags: frozenset[str] = frozenset()

    def launch(
        self, host: EngineHost, run: EngineRun, resolved: ResolvedModel, port: int, cache_root: Path
    ) -> EngineLaunch:
        if resolved.format != "triton":
            raise InvalidInput(f"{resolved.id} is {resolved.format}, not a Triton model repository")
        check_no_remote_code(resolved, host.settings.allow_remote_code)
        settings = host.settings.engines.triton
        env = {**settings.env, **run.env}
        binary = check_binary(run.binary or settings.binary or "tritonserver", "tritonserver", HOW_TO_GET)
        names = resolved.metadata.get("model_names")
        return EngineLaunch(
            identity=binaries.given(binary),
            argv=argv(binary, str(resolved.local_path), run.host, port, list(run.flags)),
            flags=list(run.flags),
            env=env,
            version=version(binary, env),
            ready_timeout_s=settings.ready_timeout_s,
            models=sorted(str(n) for n in names) if isinstance(names, list) else [],
        )

    def is_ready(self, state: PoolState) -> bool:
        return is_ready(state.host, state.port, state.models)

    def after_ready(self, state: PoolState, subject: str) -> None:
        check_models(state.host, state.port, state.models, subject)

    def load_failures(self, log_path: Path) -> str:
        return load_failures(log_path)


KIND = Triton()
