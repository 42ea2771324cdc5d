"""One rule everywhere: behaviours that used to differ between code paths, pinned so they stay the same.

- a local *directory* answers a request by the same rule as a local file: an advisory mismatch never
  answers a later strict request, and a verified pin applies when the digest is not repeated;
- ``Retry-After`` is honoured by the range workers and by the registry client, as by the single stream
  (the waits are measured on the server's clock);
- a lock wait that times out is exit 8 (timed out waiting), not 1 ("unexpected bug").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from model_provisioner import Settings
from model_provisioner.core.hashing import repo_digest
from model_provisioner.net.registry.client import RegistryClient
from tests.conftest import run_cli
from tests.servers.fileserver import Fault

from .helpers import MiB, spawn_ensure, wait_for_path


def transformers_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    save_file({"w": np.arange(64, dtype=np.float32)}, str(root / "model.safetensors"))
    return root


def tree_digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return repo_digest(
        [(p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in files]
    )


WRONG = "sha256:" + "0" * 64


def test_a_directory_accepted_as_advisory_never_answers_a_strict_request(cli: Any, tmp_path: Path) -> None:
    model = transformers_dir(tmp_path / "repo")
    advisory = cli("ensure", str(model), "--digest", WRONG, "--no-strict", "--json")
    assert advisory.code == 0, advisory.stderr
    assert json.loads(advisory.stdout)["verification"] == "mismatch_advisory"
    strict = cli("ensure", str(model), "--digest", WRONG)
    # the same rule as a file: the advisory entry is not an answer to a strict request; the bytes are compared
    assert strict.code == 4 and "mismatch" in strict.stderr, strict.stderr
    right = cli("ensure", str(model), "--digest", tree_digest(model), "--json")
    assert right.code == 0 and json.loads(right.stdout)["verification"] == "verified", right.stderr


def test_a_directory_keeps_its_verified_pin_when_the_digest_is_not_repeated(cli: Any, tmp_path: Path) -> None:
    model = transformers_dir(tmp_path / "repo")
    pin = tree_digest(model)
    assert cli("ensure", str(model), "--digest", pin).code == 0
    original = (model / "config.json").read_text()
    (model / "config.json").write_text(original.replace("llama", "llamb"))
    for _ in range(2):  # no digest given: the pin from the first run still applies, every time
        changed = cli("ensure", str(model))
        assert changed.code == 4 and pin in changed.stderr, changed.stderr
    entry = json.loads(cli("inspect", str(model), "--json").stdout)
    assert entry["lifecycle"] == "Failed" and entry["expected_digest"] == pin  # a failure never drops the pin
    (model / "config.json").write_text(original)
    restored = cli("ensure", str(model), "--json")
    assert restored.code == 0 and json.loads(restored.stdout)["verification"] == "verified", restored.stderr


def test_a_changed_pinned_file_fails_every_time_until_it_is_restored(cli: Any, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    original = bytes(range(256)) * 4
    model.write_bytes(original)
    pin = "sha256:" + hashlib.sha256(original).hexdigest()
    assert cli("ensure", str(model), "--digest", pin).code == 0
    model.write_bytes(original[::-1])
    for _ in range(2):  # the second try used to record the new bytes as the model ("recorded", exit 0)
        changed = cli("ensure", str(model))
        assert changed.code == 4 and pin in changed.stderr, changed.stderr
    model.write_bytes(original)
    restored = cli("ensure", str(model), "--json")
    assert restored.code == 0 and json.loads(restored.stdout)["verification"] == "verified", restored.stderr


def test_range_workers_honour_retry_after(net: Any, fileserver: Any) -> None:
    data = np.random.default_rng(3).integers(0, 256, 8 * MiB, dtype=np.uint8).tobytes()
    url = fileserver.put("big.bin", data)
    # the first request (a bounded first range) is served; the next one, a range worker's, gets 503 + Retry-After
    fileserver.faults["/big.bin"] = Fault(statuses=[503], retry_after="1", statuses_after=1)
    prov = net(
        transfer={
            "connections": 4,
            "parallel_threshold_bytes": MiB,
            "parallel_chunk_min_bytes": MiB,
            "single_stream_enough_bytes_per_s": 1e15,  # always fan out after the first range
            "backoff_base_s": 0.01,
        }
    )
    resolved = prov.ensure_present(url, "sha256:" + hashlib.sha256(data).hexdigest())
    assert resolved.local_path.read_bytes() == data
    requests = [r for r in fileserver.requests if r.path == "/big.bin"]
    refused = requests[1]  # answered 503 with Retry-After: 1
    again = next(r for r in requests[2:] if r.headers.get("Range") == refused.headers.get("Range"))
    # without Retry-After the backoff would have retried within ~10 ms
    assert again.at - refused.at >= 0.9, (again.at - refused.at, refused.headers.get("Range"))


def test_the_registry_client_honours_retry_after(
    fileserver: Any, cache_dir: Path, settings_file: Any, monkeypatch: Any
) -> None:
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:" + "4" * 64, "size": 2},
            "layers": [],
        }
    ).encode()
    fileserver.put("v2/team/model/manifests/v1", manifest)
    fileserver.faults["/v2/team/model/manifests/v1"] = Fault(statuses=[503], retry_after="1")
    monkeypatch.setenv("MODEL_PROVISIONER_SETTINGS", str(settings_file(transfer={"backoff_base_s": 0.01})))
    registry = fileserver.url.split("://", 1)[1].rstrip("/")
    with RegistryClient(registry, Settings.from_env(cache_dir=cache_dir)) as client:
        raw, digest, _ = client.get_manifest("team/model", "v1", "oci://test")
    assert raw == manifest and digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    first, second = [r for r in fileserver.requests if r.path == "/v2/team/model/manifests/v1"][:2]
    assert second.at - first.at >= 0.9, second.at - first.at  # linear 10 ms backoff would not wait


def test_a_lock_wait_that_times_out_is_exit_8(cache_dir: Path, gguf_file: Path, tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("lock_timeout_s: 0.5\n")
    marker = tmp_path / "locked.paused"
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings)}
    paused = {**env, "MODEL_PROVISIONER_FAILPOINTS": f"ensure.locked=pause:{marker}"}
    holder = spawn_ensure(cache_dir, str(gguf_file), paused)
    try:
        wait_for_path(marker)  # the holder has the model's lock and waits there
        blocked = run_cli("ensure", str(gguf_file), cache_dir=cache_dir, env=env)
    finally:
        marker.unlink(missing_ok=True)
        holder.wait(timeout=60)
    assert blocked.code == 8 and "gave up after" in blocked.stderr, (blocked.code, blocked.stderr)
    assert holder.returncode == 0
