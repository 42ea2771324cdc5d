"""Cache lifecycle: gc, LRU eviction, leases and pins, dedup accounting, adopting other caches, verify --all."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from model_provisioner import DigestMismatch, Lifecycle, ModelProvisioner, Settings
from model_provisioner.core.errors import LeaseHeld
from model_provisioner.core.units import parse_duration, parse_size

from .conftest import EXAMPLE_GGUF, run_cli
from .helpers import MiB


def blob_file(tmp_path: Path, name: str, size: int = MiB, seed: int = 0) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((hashlib.sha256(f"{name}{seed}".encode()).digest() * (size // 32 + 1))[:size])
    return path


@pytest.fixture
def prov(cache_dir: Path) -> Any:
    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir, touch_interval_ms=0)) as p:
        yield p


def test_sizes_and_durations_parse_like_hf_cache_ls() -> None:
    assert parse_size("1GB") == 10**9 and parse_size("1GiB") == 2**30 and parse_size("500M") == 500 * 10**6
    assert parse_size("123") == 123 and parse_duration("7d") == 7 * 86400 and parse_duration("30m") == 1800
    with pytest.raises(ValueError):
        parse_size("lots")


def test_gc_removes_what_nothing_uses_and_reports_bytes(prov: Any, cache_dir: Path, tmp_path: Path, cli: Any) -> None:
    kept = prov.register_model("https://cdn.example/kept.bin", blob_file(tmp_path, "kept.bin"))
    gone = prov.register_model("https://cdn.example/gone.bin", blob_file(tmp_path, "gone.bin", 2 * MiB))
    # simulate leftovers: an entry deleted behind the store's back, an orphan view, old and young partials
    prov.catalog.delete(gone.id)
    orphan_view = cache_dir / "files" / "stray" / "x.bin@0"
    orphan_view.parent.mkdir(parents=True)
    orphan_view.write_bytes(b"x")
    old_partial = cache_dir / "partial" / ("a" * 64 + ".part")
    old_partial.write_bytes(b"p" * 1000)
    os.utime(old_partial, (time.time() - 7200, time.time() - 7200))
    young_partial = cache_dir / "partial" / ("b" * 64 + ".part")
    young_partial.write_bytes(b"y" * 1000)
    plan = cli("gc", "--dry-run", "--json").json()
    kinds = {(i["kind"], Path(i["what"]).name) for i in plan["removed"]}
    assert ("blob", gone.digest.split(":")[1]) in kinds and ("partial", old_partial.name) in kinds
    assert ("view", "x.bin@0") in kinds and ("view", gone.local_path.name) in kinds
    assert plan["bytes_freed"] == 2 * MiB + 1000
    assert (cache_dir / "blobs/sha256" / gone.digest.split(":")[1]).exists()  # dry run removed nothing
    result = cli("gc", "--json")
    assert result.code == 0 and result.json()["bytes_freed"] == 2 * MiB + 1000
    assert not (cache_dir / "blobs/sha256" / gone.digest.split(":")[1]).exists()
    assert not orphan_view.exists() and not old_partial.exists() and young_partial.exists()
    assert kept.local_path.read_bytes() == blob_file(tmp_path, "kept.bin").read_bytes()
    assert prov.locate(kept.id) is not None


def test_gc_keeps_a_partial_whose_download_is_running(prov: Any, cache_dir: Path) -> None:
    from model_provisioner.storage.locks import FileLock

    key = "c" * 64
    partial = cache_dir / "partial" / f"{key}.part"
    partial.write_bytes(b"in progress")
    os.utime(partial, (time.time() - 7200, time.time() - 7200))
    lock = FileLock(cache_dir / "locks" / f"blob-{key[:32]}.lock", "test")
    assert lock.try_acquire()
    try:
        prov.gc()
        assert partial.exists()
    finally:
        lock.release()
    prov.gc()
    assert not partial.exists()


def test_gc_removes_old_failed_entries(prov: Any, gguf_file: Path) -> None:
    with pytest.raises(DigestMismatch):
        prov.ensure_present(gguf_file, "sha256:" + "0" * 64)
    assert prov.gc(failed_retention_s=3600).removed == []
    report = prov.gc(failed_retention_s=0)
    assert [i["what"] for i in report.removed if i["kind"] == "failed-entry"] == [f"file:{gguf_file}"]
    assert prov.entry(gguf_file) is None and gguf_file.exists()


def test_gc_racing_a_concurrent_ensure_loses_no_blob(
    fileserver: Any, cache_dir: Path, settings_file: Any, tmp_path: Path
) -> None:
    """The ensure is paused after its blob is in the store but before the catalog knows it; gc waits for it."""
    data = os.urandom(2 * MiB)
    url = fileserver.put("race.bin", data)
    marker = tmp_path / "paused"
    env = {
        "MODEL_PROVISIONER_SETTINGS": str(settings_file()),
        "MODEL_PROVISIONER_FAILPOINTS": f"remote.fetched=pause:{marker}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache_dir), "ensure", url, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    blob = cache_dir / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()
    assert blob.exists()  # committed to the store, not yet to the catalog
    result: dict[str, Any] = {}
    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir)) as gc_prov:
        worker = threading.Thread(target=lambda: result.setdefault("report", gc_prov.gc(grace_s=0)))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive(), "gc must wait for the in-flight ensure"
        marker.unlink()
        out, err = proc.communicate(timeout=60)
        worker.join(timeout=60)
    assert proc.returncode == 0, err
    assert result["report"].waited_for_ensures and blob.exists()
    assert Path(json.loads(out)["local_path"]).read_bytes() == data


def test_lru_eviction_order_respects_pins_and_leases(cache_dir: Path, tmp_path: Path) -> None:
    settings = Settings.from_env(cache_dir=cache_dir, touch_interval_ms=0, max_cache_bytes=3 * MiB + 1000)
    with ModelProvisioner(settings) as p:
        a = p.register_model("https://h.example/a.bin", blob_file(tmp_path, "a.bin"))
        b = p.register_model("https://h.example/b.bin", blob_file(tmp_path, "b.bin"))
        c = p.register_model("https://h.example/c.bin", blob_file(tmp_path, "c.bin"))
        time.sleep(0.01)
        p.ensure_present(a.id)  # a is now the most recently used; b the least
        time.sleep(0.01)
        p.ensure_present(c.id)
        p.pin(b.id)  # ... but b is pinned
        with p.lease(c.id, holder="engine-1"):
            d = p.register_model("https://h.example/d.bin", blob_file(tmp_path, "d.bin"))
            p.ensure_present(d.id)
            from model_provisioner.ops.gc import enforce_budget

            evicted = enforce_budget(p, settings.max_cache_bytes or 0)
        assert [e[0] for e in evicted] == [a.id]  # b pinned, c leased, d just used
        assert p.entry(a.id) is None and not a.local_path.exists()
        assert all(p.locate(x.id) is not None for x in (b, c, d))


def test_budget_applies_after_each_ensure(cache_dir: Path, tmp_path: Path, fileserver: Any) -> None:
    settings = Settings.from_env(cache_dir=cache_dir, touch_interval_ms=0, max_cache_bytes=2 * MiB + 1000)
    with ModelProvisioner(settings) as p:
        first = p.register_model("https://h.example/1.bin", blob_file(tmp_path, "1.bin"))
        second = p.register_model("https://h.example/2.bin", blob_file(tmp_path, "2.bin"))
        url = fileserver.put("3.bin", os.urandom(MiB))
        third = p.ensure_present(url)
        assert p.entry(first.id) is None  # evicted to make room, least recently used first
        assert p.locate(second.id) is not None and p.locate(third.id) is not None


def test_rm_of_a_leased_model_names_the_holder_and_dead_holders_expire(
    cache_dir: Path, tmp_path: Path, cli: Any
) -> None:
    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir)) as p:
        model = p.register_model("https://h.example/l.bin", blob_file(tmp_path, "l.bin"))
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leased = cli("lease", model.id, "--holder", "vllm-worker-3", "--pid", str(engine.pid), "--json")
        assert leased.code == 0, leased.stderr
        blocked = cli("rm", model.id)
        assert blocked.code == 5 and "vllm-worker-3" in blocked.stderr and str(engine.pid) in blocked.stderr
        assert cli("gc", "--max-size", "0").code == 0 and cli("locate", model.id).code == 0  # not evicted
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=10)
        assert cli("rm", model.id).code == 0  # the holder died: its lease expired
    finally:
        if engine.poll() is None:
            engine.kill()


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_rm_force_pin_unpin_release(cache_dir: Path, tmp_path: Path, cli: Any) -> None:
    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir)) as p:
        model = p.register_model("https://h.example/p.bin", blob_file(tmp_path, "p.bin"))
    assert cli("pin", model.id).code == 0
    assert cli("rm", model.id).code == 5
    assert cli("unpin", model.id).code == 0
    lease_id = cli("lease", model.id, "--ttl", "1h").stdout.strip()
    assert cli("rm", model.id).code == 5
    assert cli("release", lease_id).code == 0
    assert cli("release", lease_id).code == 3
    assert cli("lease", model.id, "--ttl", "1h").code == 0
    assert cli("rm", model.id, "--force").code == 0
    listing = cli("ls", "--json").json()["models"]
    assert [m["id"] for m in listing] == []  # forced out despite its lease


def test_python_lease_context_manager(prov: Any, tmp_path: Path) -> None:
    model = prov.register_model("https://h.example/ctx.bin", blob_file(tmp_path, "ctx.bin"))
    with prov.lease(model.id, holder="llama-server"), pytest.raises(LeaseHeld, match="llama-server"):
        prov.evict(model.id)
    assert prov.evict(model.id) == [model.id]


def test_ls_counts_shared_blobs_once_and_sorts_filters(prov: Any, tmp_path: Path, cli: Any) -> None:
    shared = blob_file(tmp_path, "shared.bin", 2 * MiB)
    prov.register_model("hf:org/one/shared.bin", shared)
    prov.register_model("hf:org/two/shared.bin", shared)
    prov.register_model("https://h.example/small.bin", blob_file(tmp_path, "small.bin", 1000))
    listing = cli("ls", "--json").json()
    assert listing["logical_bytes"] == 4 * MiB + 1000 and listing["disk_bytes"] == 2 * MiB + 1000
    by_size = cli("ls", "--json", "--sort", "size").json()["models"]
    assert by_size[-1]["id"] == "https://h.example/small.bin"
    big = cli("ls", "--json", "--filter", "size>1MB").json()["models"]
    assert sorted(m["id"] for m in big) == ["hf:org/one/shared.bin", "hf:org/two/shared.bin"]
    assert cli("ls", "--json", "--filter", "unused>7d").json()["models"] == []
    assert len(cli("ls", "--json", "--filter", "used<1h").json()["models"]) == 3
    human = cli("ls")
    assert "on disk (shared blobs counted once)" in human.stderr and "2.0 MiB on disk" in human.stderr
    assert cli("ls", "--filter", "size~3").code == 2


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_import_a_cache_huggingface_hub_wrote(hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any) -> None:
    from huggingface_hub import hf_hub_download
    from make_tiny_gguf import write_tiny_gguf

    data = write_tiny_gguf(tmp_path / "g.gguf", extra_tensor_bytes=MiB).read_bytes()
    commit = hub.add_repo("org/adopt", {"m-Q4_K_M.gguf": data, "config.json": b"{}"})
    hf_cache = tmp_path / "hf-cache"
    hf_hub_download("org/adopt", "m-Q4_K_M.gguf", endpoint=hub.url, cache_dir=str(hf_cache))
    hf_hub_download("org/adopt", "config.json", endpoint=hub.url, cache_dir=str(hf_cache))
    served_before = sum(hub.cdn.bytes_served.values())
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    imported = run_cli("import", "--hf-cache", str(hf_cache), "--only", "hf", "--json", cache_dir=cache_dir, env=env)
    assert imported.code == 0, imported.stderr
    report = imported.json()
    # the commit-pinned id, and the branch id the cache's refs/main names (issue 26 item 2)
    assert [a["ref"] for a in report["adopted"]] == [
        f"hf:org/adopt@{commit}/m-Q4_K_M.gguf",
        "hf:org/adopt/m-Q4_K_M.gguf",
    ]
    assert any("config.json" in s["ref"] for s in report["skipped"])  # not LFS: nothing to verify against
    blob = cache_dir / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()
    snapshot_file = next((hf_cache / "models--org--adopt" / "blobs").glob(hashlib.sha256(data).hexdigest()))
    assert os.stat(blob).st_ino == os.stat(snapshot_file).st_ino  # linked, stored once
    # the pinned ref is answered locally; the branch ref asks the Hub API only: zero bytes from the CDN
    pinned = run_cli("ensure", f"hf:org/adopt@{commit}/m-Q4_K_M.gguf", "--json", cache_dir=cache_dir, env=env)
    assert pinned.code == 0 and pinned.json()["from_cache"]
    main = run_cli("ensure", "hf:org/adopt/m-Q4_K_M.gguf", "--json", cache_dir=cache_dir, env=env)
    assert main.code == 0 and main.json()["bytes_fetched"] == 0
    assert sum(hub.cdn.bytes_served.values()) == served_before
    # as huggingface_hub's offline mode: the branch id answers with no network at all
    offline = run_cli("--offline", "ensure", "hf:org/adopt/m-Q4_K_M.gguf", "--json", cache_dir=cache_dir, env=env)
    assert offline.code == 0 and offline.json()["from_cache"], offline.stderr


def test_automatic_adoption_is_opt_in(hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any) -> None:
    from huggingface_hub import hf_hub_download
    from make_tiny_gguf import write_tiny_gguf

    data = write_tiny_gguf(tmp_path / "g.gguf", extra_tensor_bytes=MiB, seed=3).read_bytes()
    hub.add_repo("org/auto", {"m.gguf": data})
    hf_cache = tmp_path / "hf-cache"
    hf_hub_download("org/auto", "m.gguf", endpoint=hub.url, cache_dir=str(hf_cache))
    served = sum(hub.cdn.bytes_served.values())
    env = {
        "MODEL_PROVISIONER_SETTINGS": str(settings_file(adopt_caches=True)),
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(hf_cache),
    }
    result = run_cli("ensure", "hf:org/auto/m.gguf", "--json", cache_dir=cache_dir, env=env)
    assert result.code == 0, result.stderr
    assert sum(hub.cdn.bytes_served.values()) == served and result.json()["bytes_fetched"] == 0


def test_import_an_ollama_store(tmp_path: Path, cache_dir: Path, cli: Any) -> None:
    from make_tiny_gguf import write_tiny_gguf

    models = tmp_path / "ollama"
    data = write_tiny_gguf(tmp_path / "o.gguf").read_bytes()
    hex_ = hashlib.sha256(data).hexdigest()
    (models / "blobs").mkdir(parents=True)
    (models / "blobs" / f"sha256-{hex_}").write_bytes(data)
    (models / "blobs" / f"sha256-{'e' * 64}").write_bytes(b"tampered")  # a layer whose bytes do not match
    manifest_dir = models / "manifests" / "registry.ollama.ai" / "library" / "tiny"
    manifest_dir.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{hex_}", "size": len(data)}
    (manifest_dir / "latest").write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    bad = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "e" * 64, "size": 8}
    (manifest_dir / "broken").write_text(json.dumps({"schemaVersion": 2, "layers": [bad]}))
    report = cli("import", "--ollama", str(models), "--only", "ollama", "--json").json()
    assert [a["ref"] for a in report["adopted"]] == ["oci://registry.ollama.ai/library/tiny:latest"]
    assert any("broken" in s["ref"] and "mismatch" in s["why"] for s in report["skipped"])
    located = cli("locate", "oci://registry.ollama.ai/library/tiny:latest", "--json").json()
    assert located["metadata"]["format"] == "gguf"


def test_verify_all_parallel_fails_every_entry_of_a_corrupted_blob_and_repairs(
    fileserver: Any, cache_dir: Path, settings_file: Any, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PROVISIONER_SETTINGS", str(settings_file()))
    data = os.urandom(2 * MiB)
    url = fileserver.put("v.bin", data)
    assert cli("ensure", url).code == 0
    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir)) as p:
        p.register_model("hf:org/alias/v.bin", _write(tmp_path / "v.bin", data))  # same blob, second id
        p.register_model("https://h.example/other.bin", blob_file(tmp_path, "other.bin"))
    blob = cache_dir / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()
    blob.chmod(0o644)
    with open(blob, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00rot\x00")
    result = cli("verify", "--all", "--json")
    assert result.code == 4
    failed = sorted(r["id"] for r in result.json()["results"] if not r["ok"])
    assert url in failed
    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir)) as p:
        alias, other = p.entry("hf:org/alias/v.bin"), p.entry("https://h.example/other.bin")
        assert alias is not None and alias.lifecycle is Lifecycle.FAILED  # shares the corrupted blob
        assert other is not None and other.lifecycle is Lifecycle.ACTIVE
    assert not blob.exists()  # never served again
    repaired = cli("verify", url, "--repair", "--json")
    assert repaired.code == 0, repaired.stdout + repaired.stderr
    assert Path(cli("locate", url, "--json").json()["local_path"]).read_bytes() == data


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------- 9. leases can be seen and named
def test_leases_are_listed_and_named_where_they_block(
    cli: Any, api_factory: Any, tmp_path: Path, cache_dir: Path
) -> None:
    model = tmp_path / "api" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(EXAMPLE_GGUF.read_bytes())
    assert cli("ensure", str(model)).code == 0
    both = cli("lease", str(model), "--ttl", "1h", "--pid", "1", "--holder", "job42", "--json").json()
    assert both["pid"] == 1 and both["expires_ms"] - both["created_ms"] == 3600 * 1000  # TTL and pid, both kept
    ttl_only = cli("lease", str(model), "--ttl", "10m", "--holder", "job43").stdout.strip()
    listed = cli("leases", "--json").json()["leases"]
    assert {entry["lease_id"] for entry in listed} == {both["lease_id"], ttl_only}
    text = cli("leases").stdout
    assert "None" not in text and "job42" in text and "pid 1 on" in text and "expires in" in text
    refused = cli("rm", str(model))
    assert refused.code == 5 and both["lease_id"] in refused.stderr and ttl_only in refused.stderr
    assert "None" not in refused.stderr and "release" in refused.stderr
    c = api_factory(settings={"api_file_roots": [str(model.parent)]}).client
    assert {entry["lease_id"] for entry in c.get("/v1/leases").json()["leases"]} == {both["lease_id"], ttl_only}
    assert cli("release", both["lease_id"]).code == 0 and cli("release", ttl_only).code == 0
    assert cli("leases", "--json").json()["leases"] == []


def test_ls_short_ids_filtered_totals_files_in_place_and_one_json_shape(
    prov: Any, tmp_path: Path, cli: Any, make_gguf: Any
) -> None:
    """Issue 26 items 7 and 8: a 12-hex short id as ollama and docker show; a filtered listing's summary totals
    what it lists; files registered in place are said to be where they are; ls --json entries are the
    objects inspect --json and the HTTP API show (without the history)."""
    prov.register_model("https://h.example/big.bin", blob_file(tmp_path, "big.bin", 2 * MiB))
    local = make_gguf("local.gguf")
    assert cli("ensure", str(local)).code == 0
    listing = cli("ls", "--json").json()
    entry = next(m for m in listing["models"] if m["id"] == f"file:{local}")
    assert entry["short_id"] == entry["digest"].split(":")[1][:12]
    shown = cli("inspect", "--json", f"file:{local}").json()
    assert {k: v for k, v in shown.items() if k not in ("verifications", "memory", "lint")} == entry
    human = cli("ls")
    rows = {line.split()[1]: line.split()[0] for line in human.stdout.splitlines()[1:]}
    assert rows[f"file:{local}"] == entry["short_id"]
    size = local.stat().st_size
    assert "of it in files registered where they are" in human.stderr
    filtered = cli("ls", "--filter", "size>1MB")
    assert "1 of 2 entries; 2.0 MiB listed;" in filtered.stderr, filtered.stderr
    assert cli("ls", "--json", "--filter", "format=gguf").json()["listed_bytes"] == size
