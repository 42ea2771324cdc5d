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

from model_provisioner.core.errors import EngineFailed
from model_provisioner.engines.process import http_status

HOW_TO_GET = (
    "install Triton Inference Server (or the nvidia-pytriton wheel, which ships tritonserver), put it on PATH or "
    "set engines.triton.binary, and its libraries in engines.triton.env"
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
            [binary, "--help"], capture_output=True, text=True, timeout=30, check=False, env={**os.environ, **env}
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
    try:
        text = log_path.read_bytes()[-262144:].decode("utf-8", "replace")
    except OSError:
        return ""
    found = dict.fromkeys(f"{m.group(1)} ({m.group(3).strip()[:200]})" for m in _FAILED_RE.finditer(text))
    return "; ".join(found)
