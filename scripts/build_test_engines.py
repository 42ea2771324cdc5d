#!/usr/bin/env python3
"""Build the engines the tests run, once, through the product itself: ``engines install llamacpp --source``
on the llama.cpp tree vendored in the llama-cpp-python sdist (fetched by fetch_test_assets.py). The engine is
kept in the engine cache under ~/.cache/model-provisioner-tests (``engine-cache/engines/llamacpp/<key>/``),
so a later run builds nothing (about 8 minutes on 2 cores the first time; an interrupted build continues).
``run`` on the shipped example proves the build. Also tritonserver from the nvidia-pytriton wheel, in a venv
of its own (``triton_home``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "examples"))

import fetch_test_assets as fetch_test_assets  # noqa: E402  # re-exported for tests/conftest.py

from model_provisioner.engines.package_index import LLAMACPP_SDIST  # noqa: E402

ENGINE_CACHE = fetch_test_assets.CACHE / "engine-cache"
SOURCE_SUBDIR = LLAMACPP_SDIST.subdir
VOCAB = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"


#: the shipped example llama-server runs (examples/make_runnable_gguf.py, tied embeddings, the vocabulary below)
RUNNABLE_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-runnable-llama.gguf"


def runnable_model(directory: Path) -> Path:
    """A copy of the shipped runnable example in ``directory`` (tests change their copy, never the example)."""
    copy = directory / RUNNABLE_EXAMPLE.name
    shutil.copyfile(RUNNABLE_EXAMPLE, copy)
    return copy


def regenerate_runnable_example(directory: Path) -> Path:
    """The shipped runnable example written again from its recipe: random weights (seed 0) and the sdist's real
    llama-spm vocabulary. The test suite checks it is byte for byte the shipped file."""
    from make_runnable_gguf import write_runnable_gguf

    return write_runnable_gguf(test_vocab(directory), directory / RUNNABLE_EXAMPLE.name, tied=True)


def test_vocab(directory: Path) -> Path:
    """The sdist's llama-spm vocabulary as ``directory/vocab.gguf`` (the runnable models' tokenizer)."""
    sdist = fetch_test_assets.CACHE / fetch_test_assets.SDIST
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(VOCAB))
        source = tar.extractfile(member)
        assert source is not None
        vocab = directory / "vocab.gguf"
        vocab.write_bytes(source.read())
    return vocab


TRITON = fetch_test_assets.CACHE / "triton"
PYTRITON = "nvidia-pytriton==0.7.0"


def triton_home() -> dict[str, str]:
    """tritonserver from the nvidia-pytriton wheel (its CPU build, python backend only), in a venv of its own
    (it pins numpy < 2): the binary, the backend directory with the stub for this Python, and the environment
    it needs (LD_LIBRARY_PATH to the wheel's libraries, PYTHONPATH for the python backend's numpy)."""
    venv = TRITON / "venv"
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    home = TRITON / "home"
    if not (home / "bin" / "tritonserver").is_file():
        if not (site / "pytriton").is_dir():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", PYTRITON], check=True)
        staged = TRITON / "home.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        wheel_home = site / "pytriton" / "tritonserver"
        shutil.copytree(wheel_home, staged, ignore=shutil.ignore_patterns("python_backend_stubs"))
        stub = wheel_home / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(stub / "triton_python_backend_stub", staged / "backends" / "python" / "triton_python_backend_stub")
        os.replace(staged, home)
    return {
        "binary": str(home / "bin" / "tritonserver"),
        "backend_directory": str(home / "backends"),
        "LD_LIBRARY_PATH": str(site / "nvidia_pytriton.libs"),
        "PYTHONPATH": str(site),
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
    }


def main() -> int:
    """``engines install llamacpp`` from the cached sdist into the engine cache (builds nothing when it was
    built before; progress lines while it builds), then ``run`` on the shipped example proves the build."""
    if fetch_test_assets.main() != 0:
        return 1
    triton_home()
    sdist = fetch_test_assets.CACHE / fetch_test_assets.SDIST
    cli = [sys.executable, "-m", "model_provisioner", "--cache-dir", str(ENGINE_CACHE)]
    source = ["--source", f"file:{sdist}", "--digest", f"sha256:{fetch_test_assets.SDIST_SHA256}"]
    installed = subprocess.run([*cli, "engines", "install", "llamacpp", *source, "--subdir", SOURCE_SUBDIR])
    if installed.returncode != 0:
        return installed.returncode
    with tempfile.TemporaryDirectory(prefix="mprov-engine-build-") as tmp:
        model = runnable_model(Path(tmp))
        proof = subprocess.run([*cli, "run", str(model), "Hello", "--max-tokens", "4"], stdout=subprocess.DEVNULL)
        return proof.returncode


if __name__ == "__main__":
    sys.exit(main())
