"""What many test modules use: sizes, digests, model bytes written with gguf/safetensors, the files of a
transformers or Triton repository, and small helpers against the test servers (a bucket, bytes served)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ by ``seed`` (fast to make: a repeated SHA-256 block)."""
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def partial_key(url: str) -> str:
    """The name (without suffix) of the partial download of ``url`` in ``<cache>/partial``."""
    from model_provisioner.core.redact import redact_url

    return hashlib.sha256(redact_url(url).encode()).hexdigest()


def partial_bytes_held(cache: Path) -> int:
    """What the partial downloads of ``cache`` hold on disk (allocated blocks: ranges land sparse, so the
    apparent size runs ahead)."""
    held = 0
    for part in (cache / "partial").glob("*.part"):
        st = part.stat()
        held += min(st.st_size, st.st_blocks * 512)
    return held


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of ``data`` (what a ``sha256:`` digest carries)."""
    return hashlib.sha256(data).hexdigest()


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``: a digest as users pass it (``--digest``)."""
    return "sha256:" + sha256_hex(data)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``, read a MiB at a time."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            hasher.update(chunk)
    return hasher.hexdigest()


def digest_of_file(path: Path) -> str:
    """``sha256:<hex>`` of the file at ``path``."""
    return "sha256:" + sha256_file(path)


def gguf_bytes(tmp_path: Path, name: str = "g.gguf", **kwargs: Any) -> bytes:
    from make_tiny_gguf import write_tiny_gguf

    (tmp_path / "gen").mkdir(exist_ok=True)
    return write_tiny_gguf(tmp_path / "gen" / name, **kwargs).read_bytes()


def safetensors_bytes(n_floats: int, seed: int = 0) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    return save({"w": rng.standard_normal(n_floats, dtype=np.float32)})


def cdn_bytes(hub: Any) -> int:
    """Bytes the fake Hub's CDN (where LFS files are) served."""
    return int(sum(hub.cdn.bytes_served.values()))


def transformers_repo(
    n_shards: int = 3, extra: dict[str, bytes] | None = None, config: dict[str, Any] | None = None
) -> dict[str, bytes]:
    shards = {
        f"model-0000{i}-of-0000{n_shards}.safetensors": safetensors_bytes(40_000, seed=i)
        for i in range(1, n_shards + 1)
    }
    index = {
        "metadata": {"total_size": sum(len(v) for v in shards.values())},
        "weight_map": {f"layer.{i}.w": name for i, name in enumerate(shards)},
    }
    files = {
        "config.json": json.dumps(
            config or {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096}
        ).encode(),
        "generation_config.json": b"{}",
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b"{}",
        "model.safetensors.index.json": json.dumps(index).encode(),
        "pytorch_model.bin": b"\x00" * 3000,  # must NOT be fetched when safetensors exist
        "flax_model.msgpack": b"\x00" * 2000,
        "README.md": b"# model card",
        **shards,
    }
    files.update(extra or {})
    return files


def s3_bucket(s3: Any, name: str) -> Any:
    client = s3.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=name)
    return client


ONNX_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
"""
PY_CONFIG = """
name: "{name}"
backend: "python"
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "IDS" data_type: TYPE_INT64 dims: [ -1 ] }} ]
"""
ENSEMBLE_CONFIG = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
ensemble_scheduling {
  step [
    { model_name: "tokenizer" model_version: -1
      input_map { key: "TEXT" value: "TEXT" } output_map { key: "IDS" value: "ids" } },
    { model_name: "%s" model_version: -1
      input_map { key: "INPUT0" value: "ids" } output_map { key: "OUTPUT0" value: "OUTPUT0" } }
  ]
}
"""


def triton_repo(second_step: str = "encoder") -> dict[str, bytes]:
    return {
        "encoder/config.pbtxt": ONNX_CONFIG.format(name="encoder").encode(),
        "encoder/1/model.onnx": b"\x08\x07onnx-bytes" * 50,
        "tokenizer/config.pbtxt": PY_CONFIG.format(name="tokenizer").encode(),
        "tokenizer/1/model.py": b"class TritonPythonModel:\n    pass\n",
        "pipeline/config.pbtxt": (ENSEMBLE_CONFIG % second_step).encode(),
        "pipeline/1/.keep": b"",
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def sign(model: Path, private: Path, signature: Path | None = None) -> Path:
    """Sign like `model_signing sign key`: the signature sits in the model directory, or beside a file."""
    from model_signing import hashing, signing

    signature = signature or (model / "model.sig" if model.is_dir() else model.with_name(model.name + ".sig"))
    config = signing.Config().use_elliptic_key_signer(private_key=private)
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[signature], ignore_git_paths=True))
    config.sign(model, signature)
    return signature


def hub_origin_bytes(hub: Any) -> int:
    """Bytes the fake Hub and its CDN served, in all."""
    return int(sum(hub.cdn.bytes_served.values()) + sum(hub.server.bytes_served.values()))


def spawn_ensure(cache: Path, ref: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache), "ensure", ref, "--json"]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )


def wait_for(condition: Any, timeout_s: float = 60, what: str = "") -> Any:
    """Poll the condition itself (bounded) and return its value: never a fixed sleep that races on a busy
    machine."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


def wait_for_path(path: Path, timeout: float = 30) -> None:
    """Wait (bounded) until ``path`` exists: a failpoint's pause marker, a file a process writes."""
    wait_for(path.exists, timeout, f"{path} to appear")


def processes_running(fragment: str) -> list[int]:
    """Pids of this user's processes whose command line contains ``fragment`` (a cache or model path): what a
    failed or stopped command must not leave behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if fragment in cmdline and "pytest" not in cmdline:
            found.append(int(entry.name))
    return found


def serve_page(server: Any, prefix: str, body: bytes, content_type: str = "text/html") -> None:
    """``server`` (a FileServer) answers every path under ``prefix`` with ``body``: an index page, a listing."""

    def route(handler: Any, head: bool) -> bool:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(body)
        return True

    server.routes[prefix] = route
