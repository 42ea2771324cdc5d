"""Single-flight across threads and processes; no stale lock after SIGKILL; global fetch limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from model_provisioner import Lifecycle, ModelProvisioner

from .conftest import run_cli
from .helpers import spawn_ensure, wait_for_path


def hashed_count(cache: Path, model_id: str) -> int:
    with ModelProvisioner.file_only(cache) as prov:
        return sum(1 for v in prov.catalog.verifications(model_id) if v.bytes_hashed > 0)


@pytest.fixture(scope="module")
def big_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from make_tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("big") / "big.gguf", extra_tensor_bytes=48 << 20)


def test_threads_share_one_hash(cache_dir: Path, big_gguf: Path) -> None:
    with ModelProvisioner.file_only(cache_dir) as prov, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: prov.ensure_present(big_gguf), range(16)))
    assert len({r.digest for r in results}) == 1
    assert sum(not r.from_cache for r in results) == 1
    assert hashed_count(cache_dir, f"file:{big_gguf}") == 1


def test_eight_processes_at_once_hash_once(cache_dir: Path, big_gguf: Path) -> None:
    procs = [spawn_ensure(cache_dir, str(big_gguf)) for _ in range(8)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    payloads = [json.loads(out) for out, _ in outputs]
    assert len({(p["id"], p["digest"], p["local_path"]) for p in payloads}) == 1
    assert hashed_count(cache_dir, f"file:{big_gguf}") == 1
    assert len(run_cli("ls", "--json", cache_dir=cache_dir).json()["models"]) == 1


def test_waiters_reuse_the_holders_result(cache_dir: Path, big_gguf: Path, tmp_path: Path) -> None:
    """The first process is paused while holding the lock; seven more queue behind it; all get its result."""
    marker = tmp_path / "holder.paused"
    holder = spawn_ensure(cache_dir, str(big_gguf), {"MODEL_PROVISIONER_FAILPOINTS": f"ensure.locked=pause:{marker}"})
    wait_for_path(marker)
    waiters = [spawn_ensure(cache_dir, str(big_gguf)) for _ in range(7)]
    time.sleep(0.5)  # give the waiters time to reach the lock; correctness does not depend on it
    assert all(w.poll() is None for w in waiters), "a waiter finished while the holder held the lock"
    marker.unlink()
    holder_out, _ = holder.communicate(timeout=120)
    waiter_outs = [json.loads(w.communicate(timeout=120)[0]) for w in waiters]
    assert holder.returncode == 0 and not json.loads(holder_out)["from_cache"]
    assert all(w["from_cache"] for w in waiter_outs)
    assert hashed_count(cache_dir, f"file:{big_gguf}") == 1


@pytest.mark.parametrize("point", ["ensure.locked", "ensure.hashed", "ensure.before_commit"])
def test_sigkilled_holder_does_not_block_the_next_ensure(
    cache_dir: Path, big_gguf: Path, tmp_path: Path, point: str
) -> None:
    marker = tmp_path / "paused"
    holder = spawn_ensure(cache_dir, str(big_gguf), {"MODEL_PROVISIONER_FAILPOINTS": f"{point}=pause:{marker}"})
    wait_for_path(marker)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    with ModelProvisioner.file_only(cache_dir) as prov:
        entry = prov.entry(big_gguf)
        # whatever the holder managed to write, the catalog never claims Active for unverified work
        assert entry is None or entry.lifecycle is Lifecycle.PENDING
    start = time.monotonic()
    result = run_cli("ensure", str(big_gguf), "--json", cache_dir=cache_dir, timeout=60)
    assert result.code == 0, result.stderr
    assert result.json()["lifecycle"] == "Active"
    assert time.monotonic() - start < 30  # no stale lock to wait out


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_global_fetch_limit_across_processes(cache_dir: Path, make_gguf: Any, tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("max_parallel_fetches: 1\nlock_timeout_s: 1.5\n")
    a, b = make_gguf("a.gguf"), make_gguf("b.gguf", seed=2)
    marker = tmp_path / "slot.paused"
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings)}
    holder = spawn_ensure(cache_dir, str(a), {**env, "MODEL_PROVISIONER_FAILPOINTS": f"fetch.slot=pause:{marker}"})
    wait_for_path(marker)
    blocked = run_cli("ensure", str(b), cache_dir=cache_dir, env=env)
    assert blocked.code == 8 and "fetch slots" in blocked.stderr, blocked.stderr  # timed out waiting
    marker.unlink()
    assert holder.wait(timeout=60) == 0
    assert run_cli("ensure", str(b), cache_dir=cache_dir, env=env).code == 0


def test_two_writers_of_the_same_bytes_committing_at_once_both_succeed(
    fileserver: Any, cache_dir: Path, settings_file: Any, tmp_path: Path
) -> None:
    """B checks the store (empty) and stops just before its rename; A renames its copy and stops; B renames
    its copy over A's; A then finds another inode under the blob's name. That is another writer of the same
    bytes, not an attack: both ensures succeed (it was exit 4, "replaced while it was being committed")."""
    import hashlib
    import time

    data = os.urandom(256 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url_a, url_b = fileserver.put("a/same.bin", data), fileserver.put("b/same.bin", data)
    settings = str(settings_file())
    marker_a, marker_b = tmp_path / "a.paused", tmp_path / "b.paused"

    def start(url: str, failpoint: str) -> subprocess.Popen[str]:
        env = {**os.environ, "MODEL_PROVISIONER_SETTINGS": settings, "MODEL_PROVISIONER_FAILPOINTS": failpoint}
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "model_provisioner",
                "--cache-dir",
                str(cache_dir),
                "ensure",
                url,
                "--digest",
                digest,
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for_path(marker: Path) -> None:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, f"{marker.name} never paused"
            time.sleep(0.01)

    b = start(url_b, f"store.blob_renaming=pause:{marker_b}")
    wait_for_path(marker_b)
    a = start(url_a, f"store.blob_renamed=pause:{marker_a}")
    wait_for_path(marker_a)
    marker_b.unlink()  # B renames its copy over A's and finishes
    assert b.wait(timeout=30) == 0, b.stderr.read() if b.stderr else ""
    marker_a.unlink()  # A finds B's inode under the name
    assert a.wait(timeout=30) == 0, a.stderr.read() if a.stderr else ""
    blob = cache_dir / "blobs" / "sha256" / digest.split(":")[1]
    assert blob.read_bytes() == data


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
