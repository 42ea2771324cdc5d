"""Files planted or changed behind our back in the cache: partials planted as links, a symlinked lock or
catalog, blobs edited through a hard link or in the store, a pinned file edited with its mtime restored, a
path swapped between a link and a file, two ids for one file. Each is refused or caught, and nothing outside
the cache is touched."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from model_provisioner import Lifecycle, ModelProvisioner, Settings

from .conftest import run_cli
from .helpers import MiB, partial_key, payload, sha256_hex


# ----------------------------------------------------------------------------- 1. planted symlinks
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_a_partial_planted_as_a_symlink_is_refused_and_its_target_untouched(
    fileserver: Any, cache_dir: Path, tmp_path: Path, settings_file: Any
) -> None:
    data = payload(2 * MiB)
    url = fileserver.put("m.bin", data)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    partial = cache_dir / "partial"
    partial.mkdir(parents=True)
    key = partial_key(url)
    (partial / f"{key}.part").symlink_to(victim)
    (partial / f"{key}.json").write_text(json.dumps({"origin": url, "expected_size": None, "parallel": False}))
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    result = run_cli("ensure", url, "--digest", f"sha256:{sha256_hex(data)}", cache_dir=cache_dir, env=env)
    assert result.code == 4, result.stderr
    assert f"{key}.part" in result.stderr and ("symbolic link" in result.stderr or "one link" in result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
    assert victim.read_bytes() == b"precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not any((cache_dir / "blobs" / "sha256").iterdir())
    listed = run_cli("ls", "--json", cache_dir=cache_dir).json()["models"]
    assert all(e["lifecycle"] != "Active" for e in listed)
    # once the planted link is gone, the same command works
    (partial / f"{key}.part").unlink()
    assert run_cli("ensure", url, "--digest", f"sha256:{sha256_hex(data)}", cache_dir=cache_dir, env=env).code == 0


def test_a_partial_planted_as_a_hard_link_is_refused(
    fileserver: Any, cache_dir: Path, tmp_path: Path, settings_file: Any
) -> None:
    data = payload(MiB, seed=2)
    url = fileserver.put("h.bin", data)
    victim = tmp_path / "mine.bin"
    victim.write_bytes(b"x" * 100)
    partial = cache_dir / "partial"
    partial.mkdir(parents=True)
    key = partial_key(url)
    os.link(victim, partial / f"{key}.part")
    (partial / f"{key}.json").write_text(json.dumps({"origin": url, "expected_size": None, "parallel": False}))
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    result = run_cli("ensure", url, cache_dir=cache_dir, env=env)
    assert result.code == 4 and "one link" in result.stderr, result.stderr
    assert victim.read_bytes() == b"x" * 100


def test_a_symlinked_store_lock_never_truncates_its_target(cache_dir: Path, tmp_path: Path, gguf_file: Path) -> None:
    assert run_cli("ensure", str(gguf_file), cache_dir=cache_dir).code == 0
    victim = tmp_path / "victim.conf"
    victim.write_text("setting = 1\n")
    lock = cache_dir / "locks" / "store.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    result = run_cli("gc", cache_dir=cache_dir)
    assert result.code == 4 and "store.lock" in result.stderr, result.stderr
    assert victim.read_text() == "setting = 1\n"


# --------------------------------------------------------------------------- 2. a blob's name is not trust
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_a_blob_edited_through_an_imported_hard_link_is_rehashed_and_never_served(
    tmp_path: Path, cache_dir: Path, fileserver: Any, settings_file: Any
) -> None:
    from make_tiny_gguf import write_tiny_gguf

    models = tmp_path / "ollama"
    data = write_tiny_gguf(tmp_path / "o.gguf").read_bytes()
    hex_ = sha256_hex(data)
    (models / "blobs").mkdir(parents=True)
    source = models / "blobs" / f"sha256-{hex_}"
    source.write_bytes(data)
    manifest_dir = models / "manifests" / "registry.ollama.ai" / "library" / "tiny"
    manifest_dir.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{hex_}", "size": len(data)}
    (manifest_dir / "latest").write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    assert run_cli("import", "--ollama", str(models), "--only", "ollama", cache_dir=cache_dir).code == 0
    blob = cache_dir / "blobs" / "sha256" / hex_
    assert blob.stat().st_ino == source.stat().st_ino  # adopted by a hard link: one copy on disk
    # the other tool's owner edits "their" file in place (same inode), keeping its size and mtime
    st = source.stat()
    source.chmod(0o644)
    with open(source, "r+b") as fh:
        fh.seek(len(data) - 1)
        fh.write(b"\x00" if data[-1:] != b"\x00" else b"\x01")
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    url = fileserver.put("same.gguf", data)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    result = run_cli("ensure", url, "--digest", f"sha256:{hex_}", "--json", cache_dir=cache_dir, env=env)
    assert result.code == 0, result.stderr
    resolved = result.json()
    assert resolved["bytes_fetched"] == len(data)  # not answered from the tampered blob
    assert Path(resolved["local_path"]).read_bytes() == data
    assert fileserver.served("same.gguf") == len(data)
    # the imported entry shares the bad inode: a warm ensure of it re-hashes and refuses it
    imported = run_cli("ensure", "oci://registry.ollama.ai/library/tiny:latest", "--offline", cache_dir=cache_dir)
    assert imported.code != 0
    located = run_cli("locate", "oci://registry.ollama.ai/library/tiny:latest", cache_dir=cache_dir)
    assert located.code == 3


def test_a_blob_tampered_in_the_store_is_quarantined_before_it_is_linked(
    net: Any, fileserver: Any, cache_dir: Path
) -> None:
    data = payload(MiB, seed=3)
    first = fileserver.put("a/m.bin", data)
    prov = net()
    prov.ensure_present(first, "sha256:" + sha256_hex(data))
    blob = cache_dir / "blobs" / "sha256" / sha256_hex(data)
    blob.chmod(0o644)
    blob.write_bytes(b"\x00" * len(data))  # the same inode, other bytes
    second = fileserver.put("b/m.bin", data)
    resolved = prov.ensure_present(second, "sha256:" + sha256_hex(data))
    assert resolved.bytes_fetched == len(data) and resolved.local_path.read_bytes() == data


# ------------------------------------------------------------------- 15. ctime is part of the fingerprint
def test_a_pinned_local_file_edited_with_its_mtime_restored_is_caught(cache_dir: Path, gguf_file: Path) -> None:
    digest = "sha256:" + sha256_hex(gguf_file.read_bytes())
    assert run_cli("ensure", str(gguf_file), "--digest", digest, cache_dir=cache_dir).code == 0
    st = gguf_file.stat()
    data = bytearray(gguf_file.read_bytes())
    data[-1] ^= 0xFF
    gguf_file.write_bytes(bytes(data))
    os.utime(gguf_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = run_cli("ensure", str(gguf_file), cache_dir=cache_dir)
    assert result.code == 4 and "mismatch" in result.stderr, result.stderr
    with ModelProvisioner(Settings.from_env(cache_dir=cache_dir)) as prov:
        entry = prov.entry(str(gguf_file))
        assert entry is not None and entry.lifecycle is not Lifecycle.ACTIVE


# ------------------------------------------------------- 12. two ids for one file share a view safely
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_removing_one_of_two_ids_for_one_file_keeps_the_others_view(
    hub: Any, cache_dir: Path, settings_file: Any
) -> None:
    from .conftest import EXAMPLE_GGUF

    hub.add_repo("org/two", {"m-Q4_K_M.gguf": EXAMPLE_GGUF.read_bytes()})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    by_quant = run_cli("ensure", "hf:org/two:Q4_K_M", "--json", cache_dir=cache_dir, env=env).json()
    by_file = run_cli("ensure", "hf:org/two/m-Q4_K_M.gguf", "--json", cache_dir=cache_dir, env=env).json()
    assert by_quant["local_path"] == by_file["local_path"]
    view = Path(by_file["local_path"])
    assert not [p for p in view.parent.iterdir() if p.name.endswith(".tmp")]  # no stray link from re-linking
    assert run_cli("rm", "hf:org/two:Q4_K_M", cache_dir=cache_dir, env=env).code == 0
    assert view.read_bytes() == EXAMPLE_GGUF.read_bytes()
    assert run_cli("locate", "hf:org/two/m-Q4_K_M.gguf", cache_dir=cache_dir, env=env).code == 0
    assert run_cli("rm", "hf:org/two/m-Q4_K_M.gguf", cache_dir=cache_dir, env=env).code == 0
    assert not view.exists()


# ------------------------------------------------- 9. api_file_roots: checked on the file that is hashed
def test_swapping_a_path_between_a_link_and_a_file_never_registers_a_file_outside_the_roots(
    api_factory: Any, tmp_path: Path, make_gguf: Any
) -> None:
    import threading

    root = tmp_path / "allowed"
    root.mkdir()
    inside = make_gguf("inside.gguf", context_length=1024)
    outside = make_gguf("outside-secret.gguf", context_length=4096)
    os.link(inside, root / "real.gguf")
    target = root / "m.gguf"
    as_link, as_file = root / ".swap-link", root / ".swap-file"
    c = api_factory(settings={"api_file_roots": [str(root)]}).client
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            for prepared, make in (
                (as_link, lambda p: p.symlink_to(outside)),
                (as_file, lambda p: os.link(root / "real.gguf", p)),
            ):
                prepared.unlink(missing_ok=True)
                make(prepared)
                os.replace(prepared, target)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        statuses = [c.post("/v1/models/ensure", json={"ref": str(target)}).status_code for _ in range(150)]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert set(statuses) <= {200, 403, 409, 422}, statuses
    secret = "sha256:" + sha256_hex(outside.read_bytes())
    models = c.get("/v1/models").json()["models"]
    for model in models:
        assert model["digest"] != secret, model
        assert Path(model["local_path"]).resolve() != outside.resolve()


def test_a_symlinked_catalog_is_refused_and_its_target_untouched(
    cache_dir: Path, tmp_path: Path, gguf_file: Path
) -> None:
    victim = tmp_path / "victim.db"
    victim.write_bytes(b"not a database of ours\n")
    cache_dir.mkdir()
    (cache_dir / "catalog.db").symlink_to(victim)
    result = run_cli("ensure", str(gguf_file), cache_dir=cache_dir)
    assert result.code == 4 and "catalog.db" in result.stderr and "symbolic link" in result.stderr, result.stderr
    assert victim.read_bytes() == b"not a database of ours\n"


def test_a_repaired_bit_flip_is_a_warning_and_says_what_was_checked(
    fileserver: Any, cache_dir: Path, settings_file: Any
) -> None:
    """A corrupt blob found on a warm ensure is fetched again and the command succeeds: warnings, not errors;
    without --digest the summary says nothing was checked against an expectation (issue 26 item 6)."""
    data = payload(MiB, seed=5)
    url = fileserver.put("flip.bin", data)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    first = run_cli("ensure", url, cache_dir=cache_dir, env=env)
    assert first.code == 0 and "recorded, no expected digest given" in first.stderr, first.stderr
    blob = cache_dir / "blobs" / "sha256" / sha256_hex(data)
    blob.chmod(0o644)
    with open(blob, "r+b") as fh:
        fh.seek(100)
        fh.write(bytes([data[100] ^ 0x01]))
    again = run_cli("ensure", url, "--digest", f"sha256:{sha256_hex(data)}", cache_dir=cache_dir, env=env)
    assert again.code == 0, again.stderr
    assert "error:" not in again.stderr and "fetching it again" in again.stderr, again.stderr
    assert "verified against the expected digest" in again.stderr
    assert blob.read_bytes() == data and fileserver.served("flip.bin") == 2 * len(data)


def test_a_source_never_reached_leaves_no_entry_and_verify_all_judges_models_with_bytes(
    fileserver: Any, cache_dir: Path, settings_file: Any
) -> None:
    """Issue 26 item 12: a typo'd ref (404, nothing listening) is not recorded; a digest mismatch is (bytes
    arrived and were refused), and verify --all judges the models that have bytes here."""
    from .servers.nginx import free_port

    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    good = fileserver.put("good.bin", payload(4096, seed=1))
    wrong = fileserver.put("wrong.bin", payload(4096, seed=2))
    assert run_cli("ensure", good, cache_dir=cache_dir, env=env).code == 0
    missing = run_cli("ensure", f"{fileserver.url}/typo.bin", cache_dir=cache_dir, env=env)
    assert missing.code == 3, missing.stderr
    closed = run_cli("ensure", f"http://127.0.0.1:{free_port()}/m.gguf", cache_dir=cache_dir, env=env)
    assert closed.code == 6, closed.stderr
    refused = run_cli("ensure", wrong, "--digest", "sha256:" + "0" * 64, cache_dir=cache_dir, env=env)
    assert refused.code == 4, refused.stderr
    listed = {m["id"]: m["lifecycle"] for m in run_cli("ls", "--json", cache_dir=cache_dir).json()["models"]}
    assert listed == {good: "Active", wrong: "Failed"}
    verified = run_cli("verify", "--all", cache_dir=cache_dir)
    assert verified.code == 0 and verified.stdout.splitlines() == [
        f"ok    {good}: ok ({listed_digest(cache_dir, good)})"
    ]


def listed_digest(cache_dir: Path, model_id: str) -> str:
    return str(
        next(m["digest"] for m in run_cli("ls", "--json", cache_dir=cache_dir).json()["models"] if m["id"] == model_id)
    )
