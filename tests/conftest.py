"""Shared fixtures: isolated caches, real GGUF files, and a CLI runner that runs the installed program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from make_tiny_gguf import write_tiny_gguf  # noqa: E402

EXAMPLE_GGUF = ROOT / "examples" / "tiny-llama.gguf"


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
