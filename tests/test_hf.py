"""hf: refs against the fake Hub over real HTTP (huggingface_hub itself works against it, see the first test).

Bytes are counted at the CDN origin (LFS) and the Hub (small files)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from model_provisioner import (
    DigestMismatch,
    Lifecycle,
    NotFound,
    OfflineError,
    PolicyDenied,
    VerificationFailed,
)
from model_provisioner.api.handoff import write_engine_handoff

from .conftest import EXAMPLE_GGUF, run_cli
from .helpers import (
    MiB,
    cdn_bytes,
    gguf_bytes,
    partial_bytes_held,
    safetensors_bytes,
    sha256_hex,
    transformers_repo,
    wait_for,
)
from .servers.fileserver import Fault


def test_huggingface_hub_itself_speaks_to_the_fake_hub(hub: Any, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download

    data = gguf_bytes(tmp_path)
    commit = hub.add_repo("org/proto", {"m.gguf": data, "README.md": b"# hi"})
    path = hf_hub_download("org/proto", "m.gguf", endpoint=hub.url, cache_dir=str(tmp_path / "hf"))
    assert Path(path).read_bytes() == data and commit in path
    snap = snapshot_download("org/proto", endpoint=hub.url, cache_dir=str(tmp_path / "hf2"))
    assert sorted(p.name for p in Path(snap).iterdir()) == ["README.md", "m.gguf"]


def test_single_gguf_file_verified_against_lfs_sha256(net: Any, hub: Any, tmp_path: Path, cache_dir: Path) -> None:
    data = gguf_bytes(tmp_path, context_length=8192, extra_tensor_bytes=2 * MiB)
    commit = hub.add_repo("TheOrg/Tiny-GGUF", {"tiny-Q4_K_M.gguf": data, "README.md": b"readme"})
    prov = net(hub.url)
    resolved = prov.ensure_present("hf:TheOrg/Tiny-GGUF/tiny-Q4_K_M.gguf")
    view = cache_dir / "gguf" / "TheOrg" / "Tiny-GGUF" / f"tiny-Q4_K_M.gguf@{sha256_hex(data)}"
    assert resolved.local_path == view and view.read_bytes() == data
    assert os.stat(view).st_ino == os.stat(cache_dir / "blobs" / "sha256" / sha256_hex(data)).st_ino
    assert resolved.metadata["revision"] == commit and resolved.metadata["ctx_max"] == 8192
    assert resolved.verification == "source_verified" and resolved.digest == f"sha256:{sha256_hex(data)}"
    assert cdn_bytes(hub) == len(data)


def test_small_git_file_is_verified_by_its_git_blob_id(net: Any, hub: Any) -> None:
    hub.add_repo("org/cfg", {"config.json": b'{"model_type": "llama"}'})
    resolved = net(hub.url).ensure_present("hf:org/cfg/config.json")
    assert resolved.local_path.read_bytes() == b'{"model_type": "llama"}'
    assert resolved.verification == "source_verified"


def test_corrupted_lfs_bytes_are_refused(net: Any, hub: Any, tmp_path: Path, cache_dir: Path) -> None:
    data = gguf_bytes(tmp_path, extra_tensor_bytes=MiB)
    hub.add_repo("org/bad", {"m-Q8_0.gguf": data})
    hub.cdn.faults[f"/lfs/{sha256_hex(data)}"] = Fault(corrupt_at=5000)
    prov = net(hub.url)
    with pytest.raises(DigestMismatch) as info:
        prov.ensure_present("hf:org/bad/m-Q8_0.gguf")
    assert info.value.exit_code == 4
    entry = prov.entry("hf:org/bad/m-Q8_0.gguf")
    assert entry is not None and entry.lifecycle is Lifecycle.FAILED
    assert not any((cache_dir / "blobs" / "sha256").iterdir())
    assert not (cache_dir / "gguf").exists() or not any((cache_dir / "gguf").rglob("*@*"))


def test_user_digest_contradicting_the_hub_fails_before_download(net: Any, hub: Any, tmp_path: Path) -> None:
    data = gguf_bytes(tmp_path)
    hub.add_repo("org/pin", {"m.gguf": data})
    with pytest.raises(DigestMismatch, match="nothing was downloaded"):
        net(hub.url).ensure_present("hf:org/pin/m.gguf", "sha256:" + "0" * 64)
    assert cdn_bytes(hub) == 0


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("hf:org/quants", "m-Q4_K_M.gguf"),  # default Q4_K_M
        ("hf:org/quants:q8_0", "m-Q8_0.gguf"),  # case-insensitive
        ("hf:org/quants:Q4_K_S", "m-Q4_K_S.gguf"),  # Q4_K does not match Q4_K_M
        ("hf:org/quants:IQ2_XXS", "m-IQ2_XXS.gguf"),
    ],
)
def test_quant_selection(net: Any, hub: Any, tmp_path: Path, ref: str, expected: str) -> None:
    files = {
        name: gguf_bytes(tmp_path, name=name, seed=i)
        for i, name in enumerate(
            ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-Q8_0.gguf", "m-IQ2_XXS.gguf", "mmproj-m-F16.gguf"]
        )
    }
    hub.add_repo("org/quants", files)
    resolved = net(hub.url).ensure_present(ref)
    assert resolved.local_path.name.startswith(expected + "@")
    assert resolved.local_path.read_bytes() == files[expected]


def test_quant_fallbacks_and_missing_quant(net: Any, hub: Any, tmp_path: Path) -> None:
    hub.add_repo("org/q8only", {"x-Q8_0.gguf": gguf_bytes(tmp_path), "mmproj-Q4_K_M.gguf": gguf_bytes(tmp_path)})
    prov = net(hub.url)
    assert prov.ensure_present("hf:org/q8only").local_path.name.startswith("x-Q8_0.gguf@")  # mmproj skipped
    hub.add_repo("org/other", {"b-F16.gguf": gguf_bytes(tmp_path, seed=1), "a-Q2_K.gguf": gguf_bytes(tmp_path)})
    assert prov.ensure_present("hf:org/other").local_path.name.startswith("a-Q2_K.gguf@")  # first GGUF
    with pytest.raises(NotFound, match=r"Q5_K_M.*Q2_K") as info:
        prov.ensure_present("hf:org/other:Q5_K_M")
    assert info.value.exit_code == 3


def test_split_gguf_fetches_every_part_into_one_directory(net: Any, hub: Any, tmp_path: Path) -> None:
    parts = {
        f"Q4_K_M/big-Q4_K_M-0000{i}-of-00003.gguf": gguf_bytes(tmp_path, name=f"p{i}.gguf", seed=i, split=(i - 1, 3, 6))
        for i in (1, 2, 3)
    }
    hub.add_repo("org/split", {**parts, "big-Q8_0.gguf": gguf_bytes(tmp_path, name="q8.gguf")})
    resolved = net(hub.url).ensure_present("hf:org/split:Q4_K_M")
    directory = resolved.local_path.parent
    assert sorted(p.name for p in directory.iterdir()) == [f"big-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert resolved.local_path.name == "big-Q4_K_M-00001-of-00003.gguf"
    assert resolved.metadata["split"]["count"] == 3
    assert cdn_bytes(hub) == sum(len(v) for v in parts.values())
    with pytest.raises(NotFound, match="00002-of-00003"):
        hub.add_repo(
            "org/split-broken",
            {
                "m-Q4_K_M-00001-of-00003.gguf": parts[next(iter(parts))],
                "m-Q4_K_M-00003-of-00003.gguf": parts[next(iter(parts))],
            },
        )
        net(hub.url).ensure_present("hf:org/split-broken")


def test_transformers_repo_minimal_set_layout_and_repo_digest(
    net: Any, hub: Any, cache_dir: Path, tmp_path: Path
) -> None:
    files = transformers_repo()
    commit = hub.add_repo("org/llama-tiny", files)
    prov = net(hub.url)
    resolved = prov.ensure_present("hf:org/llama-tiny")
    repo_dir = cache_dir / "transformers" / "org" / f"llama-tiny@{commit}"
    assert resolved.local_path == repo_dir
    fetched = sorted(str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*") if p.is_file())
    assert fetched == sorted(
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors.index.json",
            *[n for n in files if n.endswith(".safetensors")],
        ]
    )
    lines = "".join(f"{p}\t{sha256_hex(files[p])}\t{len(files[p])}\n" for p in sorted(fetched))
    assert resolved.digest == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    assert resolved.metadata["ctx_max"] == 4096 and resolved.metadata["trust_remote_code"] is False
    for name in fetched:
        assert os.stat(repo_dir / name).st_ino == os.stat(cache_dir / "blobs/sha256" / sha256_hex(files[name])).st_ino
    handoff = json.loads(write_engine_handoff(tmp_path / "out", "vllm", resolved).read_text())
    assert handoff["model"]["path"] == str(repo_dir) and handoff["model"]["trust_remote_code"] is False
    assert handoff["metadata"]["revision"] == commit
    tgi = json.loads(write_engine_handoff(tmp_path / "out", "tgi", resolved).read_text())
    assert tgi["model"]["path"] == str(repo_dir)


def test_include_exclude_globs_override(net: Any, hub: Any, cache_dir: Path) -> None:
    files = transformers_repo()
    hub.add_repo("org/globs", files)
    resolved = net(hub.url).ensure_present(
        "hf:org/globs", include=["*.json", "*.msgpack"], exclude=["generation_config.json"]
    )
    names = sorted(p.name for p in resolved.local_path.iterdir())
    assert names == [
        "config.json",
        "flax_model.msgpack",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_missing_shard_is_a_clear_error_before_big_downloads(net: Any, hub: Any) -> None:
    files = transformers_repo()
    del files["model-00002-of-00003.safetensors"]
    hub.add_repo("org/broken", files)
    with pytest.raises(NotFound, match=r"model-00002-of-00003\.safetensors") as info:
        net(hub.url).ensure_present("hf:org/broken")
    assert info.value.exit_code == 3
    assert cdn_bytes(hub) == 0  # no shard was downloaded


def test_custom_code_is_flagged_and_not_trusted_by_default(
    net: Any, hub: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = transformers_repo(
        extra={"modeling_custom.py": b"print('hi')"},
        config={"model_type": "custom", "auto_map": {"AutoModel": "modeling_custom.Model"}},
    )
    hub.add_repo("org/custom", files)
    with caplog.at_level("WARNING", logger="model_provisioner"):
        resolved = net(hub.url).ensure_present("hf:org/custom")
    assert resolved.metadata["trust_remote_code"] is True and "custom code" in caplog.text
    handoff = json.loads(write_engine_handoff(tmp_path / "o", "vllm", resolved).read_text())
    assert handoff["model"]["trust_remote_code"] is False
    handoff = json.loads(write_engine_handoff(tmp_path / "o2", "vllm", resolved, allow_remote_code=True).read_text())
    assert handoff["model"]["trust_remote_code"] is True


def test_revision_pinning(net: Any, hub: Any, tmp_path: Path) -> None:
    v1, v2 = gguf_bytes(tmp_path, seed=1), gguf_bytes(tmp_path, name="b.gguf", seed=2)
    c1 = hub.add_repo("org/rev", {"m.gguf": v1}, tag="v1")
    c2 = hub.commit("org/rev", {"m.gguf": v2})
    prov = net(hub.url)
    assert prov.ensure_present("hf:org/rev@v1/m.gguf").metadata["revision"] == c1
    assert prov.ensure_present(f"hf:org/rev@{c1}/m.gguf").local_path.read_bytes() == v1
    main = prov.ensure_present("hf:org/rev/m.gguf")
    assert main.metadata["revision"] == c2 and main.local_path.read_bytes() == v2
    with pytest.raises(NotFound, match="revision 'nope'"):
        prov.ensure_present("hf:org/rev@nope/m.gguf")
    with pytest.raises(NotFound, match="not in hf:org/rev"):
        prov.ensure_present("hf:org/rev/absent.gguf")
    with pytest.raises(NotFound, match="not found"):
        prov.ensure_present("hf:org/no-such-repo/m.gguf")


def test_pinned_ensure_makes_no_network_request(
    net: Any, hub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    data = gguf_bytes(tmp_path)
    commit = hub.add_repo("org/pinned", {"m.gguf": data})
    prov = net(hub.url)
    prov.ensure_present(f"hf:org/pinned@{commit}/m.gguf")
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("socket guard")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    again = prov.ensure_present(f"hf:org/pinned@{commit}/m.gguf")
    assert again.from_cache and attempts == []
    assert net(hub.url).ensure_present(f"hf:org/pinned@{commit}/m.gguf").from_cache and attempts == []


def test_cross_repo_dedup_downloads_nothing_twice(net: Any, hub: Any, tmp_path: Path, cache_dir: Path) -> None:
    data = gguf_bytes(tmp_path, extra_tensor_bytes=MiB)
    hub.add_repo("org/original", {"m-Q4_K_M.gguf": data})
    hub.add_repo("fan/requant", {"renamed-Q4_K_M.gguf": data, "README.md": b"same bytes"})
    prov = net(hub.url)
    prov.ensure_present("hf:org/original/m-Q4_K_M.gguf")
    first = cdn_bytes(hub)
    second = prov.ensure_present("hf:fan/requant/renamed-Q4_K_M.gguf")
    assert cdn_bytes(hub) == first and second.bytes_fetched == 0
    assert len(list((cache_dir / "blobs" / "sha256").iterdir())) == 1


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_private_repo_token_used_for_the_hub_never_for_the_cdn(
    hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any
) -> None:
    token = "hf_SuperSecretTokenValue1234567890"
    hub.tokens.add(token)
    data = gguf_bytes(tmp_path)
    hub.add_repo("org/private", {"m.gguf": data}, private=True)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    denied = run_cli("ensure", "hf:org/private/m.gguf", cache_dir=cache_dir, env=env)
    assert denied.code == 3 and "HF_TOKEN" in denied.stderr
    out = tmp_path / "out"
    ok = run_cli(
        "-v",
        "ensure",
        "hf:org/private/m.gguf",
        "--handoff-dir",
        str(out),
        "--json",
        cache_dir=cache_dir,
        env={**env, "HF_TOKEN": token},
    )
    assert ok.code == 0, ok.stderr
    assert any(r.headers.get("Authorization") == f"Bearer {token}" for r in hub.server.requests)
    assert all("Authorization" not in r.headers for r in hub.cdn.requests)  # cross-host redirect: dropped
    texts = [denied.stderr, ok.stdout, ok.stderr]
    texts += [p.read_bytes().decode("latin-1") for p in [*cache_dir.rglob("*.db*"), *out.rglob("*")] if p.is_file()]
    assert all(token not in t and "cdnsecret" not in t for t in texts)


def test_gated_repo_is_denied_with_a_hint(net: Any, hub: Any, tmp_path: Path) -> None:
    hub.add_repo("org/gated", {"m.gguf": gguf_bytes(tmp_path)}, gated=True)
    with pytest.raises(PolicyDenied, match="gated") as info:
        net(hub.url).ensure_present("hf:org/gated/m.gguf")
    assert info.value.exit_code == 5


def test_offline_hf_zero_sockets(net: Any, hub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = gguf_bytes(tmp_path)
    hub.add_repo("org/off", {"m.gguf": data})
    net(hub.url).ensure_present("hf:org/off/m.gguf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import socket

    attempts: list[Any] = []
    real = socket.socket.connect

    def counted_connect(self: socket.socket, addr: Any) -> None:
        attempts.append(addr)
        real(self, addr)

    monkeypatch.setattr(socket.socket, "connect", counted_connect)
    offline = net(hub.url)
    assert offline.ensure_present("hf:org/off/m.gguf").from_cache
    with pytest.raises(OfflineError):
        offline.ensure_present("hf:org/off/other.gguf")
    assert attempts == []


def test_hub_mirror_first_then_origin(net: Any, hub: Any, tmp_path: Path) -> None:
    from .servers.hub import FakeHub

    mirror = FakeHub(tmp_path / "mirror-hub")
    try:
        data = gguf_bytes(tmp_path, extra_tensor_bytes=MiB)
        hub.add_repo("org/mirrored", {"m.gguf": data})
        mirror.add_repo("org/mirrored", {"m.gguf": data})
        prov = net(hub.url, mirrors={"hf": [mirror.url]})
        assert prov.ensure_present("hf:org/mirrored/m.gguf").local_path.read_bytes() == data
        assert sum(mirror.cdn.bytes_served.values()) == len(data) and cdn_bytes(hub) == 0
        # the mirror does not have this repo: the origin serves it
        data2 = gguf_bytes(tmp_path, name="two.gguf", seed=5)
        hub.add_repo("org/only-origin", {"m.gguf": data2})
        assert prov.ensure_present("hf:org/only-origin/m.gguf").local_path.read_bytes() == data2
        assert cdn_bytes(hub) == len(data2)
    finally:
        mirror.close()


def test_hub_mirror_serving_corrupt_bytes_falls_back_to_origin(net: Any, hub: Any, tmp_path: Path) -> None:
    from .servers.hub import FakeHub

    mirror = FakeHub(tmp_path / "mirror-hub")
    try:
        data = gguf_bytes(tmp_path, extra_tensor_bytes=MiB)
        hub.add_repo("org/m", {"m.gguf": data})
        mirror.add_repo("org/m", {"m.gguf": data})
        mirror.cdn.faults[f"/lfs/{sha256_hex(data)}"] = Fault(corrupt_at=100)
        resolved = net(hub.url, mirrors={"hf": [mirror.url]}).ensure_present("hf:org/m/m.gguf")
        assert resolved.local_path.read_bytes() == data and cdn_bytes(hub) == len(data)
    finally:
        mirror.close()


def _spawn(cache: Path, ref: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache), "ensure", ref, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_kill_9_mid_lfs_download_resumes(hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any) -> None:
    """Killed while the CDN holds the LFS download still at half (the client waits the stall out, so what it
    received is on disk), the rerun fetches only the rest."""
    data = gguf_bytes(tmp_path, extra_tensor_bytes=12 * MiB)
    hub.add_repo("org/resume", {"m.gguf": data})
    half = len(data) // 2
    hub.cdn.faults[f"/lfs/{sha256_hex(data)}"] = Fault(stall_after=half, stall_s=30, times=1)
    settings = settings_file(transfer={"stall_timeout_s": 30})  # nothing moves while the CDN stalls
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings), "HF_ENDPOINT": hub.url}
    proc = _spawn(cache_dir, "hf:org/resume/m.gguf", env)
    wait_for(lambda: cdn_bytes(hub) >= half or proc.poll() is not None, 30, "half the file served")
    assert proc.poll() is None and cdn_bytes(hub) == half
    # what arrived is on disk (at most one 1 MiB buffer of the stalled stream is still in memory)
    wait_for(lambda: partial_bytes_held(cache_dir) >= half - MiB, 30, "the received bytes on disk")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    held = partial_bytes_held(cache_dir)
    hub.cdn.faults.clear()
    result = run_cli("ensure", "hf:org/resume/m.gguf", "--json", cache_dir=cache_dir, env=env)
    assert result.code == 0, result.stderr
    assert Path(result.json()["local_path"]).read_bytes() == data
    assert cdn_bytes(hub) - half == result.json()["bytes_fetched"] <= len(data) - held + MiB


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_eight_processes_one_lfs_transfer(hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any) -> None:
    data = gguf_bytes(tmp_path, extra_tensor_bytes=8 * MiB)
    hub.add_repo("org/crowd", {"m.gguf": data})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    procs = [_spawn(cache_dir, "hf:org/crowd/m.gguf", env) for _ in range(8)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({o["local_path"] for o in outs}) == 1
    assert cdn_bytes(hub) <= 1.05 * len(data)


def test_nginx_cdn_with_parallel_ranges(net: Any, hub: Any, nginx: Any, tmp_path: Path) -> None:
    """The LFS CDN is Debian's nginx: parallel ranges, byte count from nginx's own access log."""
    data = gguf_bytes(tmp_path, extra_tensor_bytes=20 * MiB)
    (nginx.root / "lfs").mkdir(exist_ok=True)
    (nginx.root / "lfs" / sha256_hex(data)).write_bytes(data)
    hub.cdn.url = nginx.url  # LFS redirects now point at nginx
    hub.add_repo("org/via-nginx", {"m.gguf": data})
    before = nginx.bytes_served().get(f"/lfs/{sha256_hex(data)}", 0)
    prov = net(
        hub.url,
        transfer={
            "parallel_threshold_bytes": 4 * MiB,
            "parallel_chunk_min_bytes": 2 * MiB,
            "single_stream_enough_bytes_per_s": 1e15,
        },
    )  # always fan out
    resolved = prov.ensure_present("hf:org/via-nginx/m.gguf")
    assert resolved.local_path.read_bytes() == data
    served = nginx.bytes_served()[f"/lfs/{sha256_hex(data)}"] - before
    assert served == len(data)
    ranges = [line for line in nginx.access_log.read_text().splitlines() if sha256_hex(data) in line]
    assert len(ranges) > 2  # several range requests


def test_hf_cli_end_to_end_with_handoff(hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any) -> None:
    files = transformers_repo(n_shards=2)
    hub.add_repo("org/cli-repo", files)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    out = tmp_path / "out"
    result = run_cli(
        "ensure",
        "hf:org/cli-repo",
        "--engine",
        "vllm",
        "--handoff-dir",
        str(out),
        "--json",
        cache_dir=cache_dir,
        env=env,
    )
    assert result.code == 0, result.stderr
    payload = result.json()
    assert payload["engine"] == "vllm" and payload["lifecycle"] == "Active"
    handoff = json.loads((out / ".runtime/engines/vllm.json").read_text())
    assert handoff["model"]["path"] == payload["local_path"]
    provenance = json.loads((out / ".runtime/provenance/models.jsonl").read_text().splitlines()[-1])
    assert provenance["bytes_fetched"] > 0 and provenance["model_id"] == "hf:org/cli-repo"
    # warm: no network, fast
    hub.server.requests.clear()
    warm = run_cli("ensure", "hf:org/cli-repo", "--json", cache_dir=cache_dir, env=env)
    assert warm.code == 0 and warm.json()["from_cache"] and hub.server.requests == []


def test_failed_git_blob_check_is_verification_failure(net: Any, hub: Any) -> None:
    hub.add_repo("org/gitbad", {"config.json": b'{"a": 1}'})
    # tamper with the stored small file after the commit was recorded
    repo = hub.repos["org/gitbad"]
    entry = next(iter(repo.commits.values()))["config.json"]
    entry.stored.write_bytes(b'{"a": 2}')
    with pytest.raises(VerificationFailed, match="git blob id"):
        net(hub.url).ensure_present("hf:org/gitbad/config.json")


def test_capped_connections_make_the_engine_fan_out(net: Any, tmp_path: Path) -> None:
    """nginx limit_rate caps each connection: the first range is slow, so the rest comes as parallel ranges."""
    from .servers.nginx import capped_nginx_with_file

    limited, data = capped_nginx_with_file(tmp_path, "limited", 24 * MiB, "8m")
    try:
        prov = net(
            transfer={"parallel_threshold_bytes": 4 * MiB, "parallel_chunk_min_bytes": 2 * MiB, "connections": 4}
        )
        resolved = prov.ensure_present(f"{limited.url}/m.bin", f"sha256:{sha256_hex(data)}")
        assert resolved.local_path.read_bytes() == data
        # switching from the watched stream to ranges drops what was in flight on that one socket, once
        served = limited.bytes_served()["/m.bin"]
        assert len(data) <= served <= 1.15 * len(data), limited.access_log.read_text()
        ranges = [line for line in limited.access_log.read_text().splitlines() if "/m.bin" in line]
        assert len(ranges) >= 4  # the first range, then parallel ranges
    finally:
        limited.close()


def test_verify_rehashes_every_file_of_a_repo(net: Any, hub: Any, tmp_path: Path) -> None:
    files = transformers_repo(n_shards=2)
    hub.add_repo("org/verify-me", files)
    prov = net(hub.url)
    resolved = prov.ensure_present("hf:org/verify-me")
    report = prov.verify("hf:org/verify-me")
    assert report.ok and "files" in report.message
    shard = resolved.local_path / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.chmod(0o644)
    shard.write_bytes(bytes(data))  # bit rot in the blob behind the view
    report = prov.verify("hf:org/verify-me")
    assert not report.ok and "model-00002-of-00002.safetensors" in report.message
    entry = prov.entry("hf:org/verify-me")
    assert entry is not None and entry.lifecycle is Lifecycle.FAILED
    assert prov.locate("hf:org/verify-me") is None


def test_verify_split_gguf_and_policy_label_in_provenance(
    hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any
) -> None:
    parts = {
        f"s-Q4_K_M-0000{i}-of-00002.gguf": gguf_bytes(tmp_path, name=f"s{i}.gguf", seed=i, split=(i - 1, 2, 4))
        for i in (1, 2)
    }
    hub.add_repo("org/split-verify", parts)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file(policy={"label": "team-prod"})), "HF_ENDPOINT": hub.url}
    out = tmp_path / "out"
    assert run_cli("ensure", "hf:org/split-verify", "--handoff-dir", str(out), cache_dir=cache_dir, env=env).code == 0
    record = json.loads((out / ".runtime/provenance/models.jsonl").read_text().splitlines()[-1])
    assert record["policy_label"] == "team-prod"
    verified = run_cli("verify", "hf:org/split-verify", "--json", cache_dir=cache_dir, env=env)
    assert verified.code == 0 and verified.json()["failed"] == 0


def test_new_revision_frees_blobs_only_the_old_one_used(net: Any, hub: Any, cache_dir: Path) -> None:
    files = transformers_repo(n_shards=2)
    old_commit = hub.add_repo("org/moving", files)
    prov = net(hub.url)
    first = prov.ensure_present("hf:org/moving")
    changed = dict(files, **{"model-00002-of-00002.safetensors": safetensors_bytes(40_000, seed=99)})
    new_commit = hub.commit("org/moving", changed)
    second = prov.ensure_present("hf:org/moving", refresh=True)
    assert second.metadata["revision"] == new_commit != old_commit
    blobs = cache_dir / "blobs" / "sha256"
    assert not (blobs / sha256_hex(files["model-00002-of-00002.safetensors"])).exists()  # only the old revision used it
    assert (blobs / sha256_hex(files["model-00001-of-00002.safetensors"])).exists()  # shared by both revisions
    assert not first.local_path.exists() and second.local_path.is_dir()


# -------------------------------------------------------- 15. a repo is laid out by the weights it holds
@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_a_gguf_repo_with_a_config_json_means_its_gguf_and_no_weights_is_an_error(
    hub: Any, cache_dir: Path, settings_file: Any
) -> None:
    gguf = EXAMPLE_GGUF.read_bytes()
    hub.add_repo(
        "org/gguf-and-config",
        {"config.json": b'{"model_type": "llama"}', "m-Q4_K_M.gguf": gguf, "README.md": b"readme"},
    )
    hub.add_repo("org/no-weights", {"config.json": b'{"model_type": "llama"}', "README.md": b"readme"})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    result = run_cli("ensure", "hf:org/gguf-and-config", "--json", cache_dir=cache_dir, env=env)
    assert result.code == 0, result.stderr
    assert result.json()["metadata"]["format"] == "gguf" and Path(result.json()["local_path"]).read_bytes() == gguf
    empty = run_cli("ensure", "hf:org/no-weights", cache_dir=cache_dir, env=env)
    assert empty.code == 4 and "no loadable weights" in empty.stderr and "safetensors" in empty.stderr, empty.stderr
    assert run_cli("locate", "hf:org/no-weights", cache_dir=cache_dir, env=env).code == 3


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
def test_hostile_names_and_nesting_from_a_hub_are_exit_4_and_never_pending(
    hub: Any, cache_dir: Path, settings_file: Any
) -> None:
    from .conftest import EXAMPLE_GGUF

    gguf = EXAMPLE_GGUF.read_bytes()
    deep = b"[" * 200_000 + b"]" * 200_000
    hub.add_repo("org/longname", {"n" * 300 + ".gguf": gguf})
    hub.add_repo("org/deep", {"config.json": b'{"a": ' + deep + b"}", "model.safetensors": safetensors_bytes(100)})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    for ref in ("hf:org/longname", "hf:org/deep"):
        result = run_cli("ensure", ref, cache_dir=cache_dir, env=env)
        assert result.code == 4, (ref, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    models = run_cli("ls", "--json", cache_dir=cache_dir, env=env).json()["models"]
    assert all(m["lifecycle"] == "Failed" for m in models), models


def test_a_refused_token_is_told_from_a_missing_repo(
    hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any
) -> None:
    """Issue 26 item 11: the Hub answers a private repo as not found; with a token set, a 401 means the token
    was refused (exit 5 naming HF_TOKEN), and a real 404 still says the token may lack access."""
    hub.tokens.add("hf_RightTokenValue1234567890abcdef")
    hub.add_repo("org/private", {"m.gguf": gguf_bytes(tmp_path)}, private=True)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    wrong = {**env, "HF_TOKEN": "hf_WrongTokenValue1234567890abcdef"}
    refused = run_cli("ensure", "hf:org/private/m.gguf", cache_dir=cache_dir, env=wrong)
    assert refused.code == 5 and "refused the token (HTTP 401)" in refused.stderr, refused.stderr
    assert "hf_WrongTokenValue" not in refused.stderr
    missing = run_cli("ensure", "hf:org/nothing/m.gguf", cache_dir=cache_dir, env=wrong)
    assert missing.code == 3 and "or the token set (HF_TOKEN) lacks access" in missing.stderr, missing.stderr
    without = run_cli("ensure", "hf:org/private/m.gguf", cache_dir=cache_dir, env=env)
    assert without.code == 3 and "set HF_TOKEN" in without.stderr


def test_token_on_the_command_line_as_hf_download_takes_it(
    hub: Any, tmp_path: Path, cache_dir: Path, settings_file: Any
) -> None:
    token = "hf_CommandLineTokenValue1234567890ab"
    hub.tokens.add(token)
    hub.add_repo("org/private2", {"m.gguf": gguf_bytes(tmp_path)}, private=True)
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    done = run_cli("-v", "ensure", "hf:org/private2/m.gguf", "--token", token, cache_dir=cache_dir, env=env)
    assert done.code == 0, done.stderr
    assert token not in done.stderr + done.stdout
    assert token.encode() not in (cache_dir / "catalog.db").read_bytes()


def _torch_checkpoint(payload: object | None = None) -> bytes:
    """A real ``torch.save`` of a state dict, or the same zip layout holding another pickle (``payload``)."""
    import io
    import pickle
    import zipfile

    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4, 4)}, buffer)
    if payload is None:
        return buffer.getvalue()
    wrapped = io.BytesIO()  # the scanner-bypass shape: the pickle inside torch's zip, not at the top
    with zipfile.ZipFile(wrapped, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        archive.writestr("archive/version", b"3\n")
    return wrapped.getvalue()


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo owned",))


def test_pickle_weights_are_refused_unless_allowed_and_then_checked_without_unpickling(
    hub: Any, cache_dir: Path, settings_file: Any
) -> None:
    """Issue 28 item 3: a transformers repo with pickle weights only is refused (exit 5, naming allow_pickle);
    allowed, a torch state dict passes and a pickle that imports os.system (wrapped in torch's zip) is exit 4."""
    config = b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}'
    hub.add_repo("org/pickled", {"config.json": config, "pytorch_model.bin": _torch_checkpoint()})
    hub.add_repo("org/evil", {"config.json": config, "pytorch_model.bin": _torch_checkpoint(_RunsCode())})
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings_file()), "HF_ENDPOINT": hub.url}
    refused = run_cli("ensure", "hf:org/pickled", cache_dir=cache_dir, env=env)
    assert refused.code == 5 and "allow_pickle: true" in refused.stderr, refused.stderr
    assert hub.cdn.bytes_served == {} or sum(hub.cdn.bytes_served.values()) == 0  # refused before any weight
    allowed = {"MODEL_PROVISIONER_SETTINGS": str(settings_file(allow_pickle=True)), "HF_ENDPOINT": hub.url}
    fine = run_cli("ensure", "hf:org/pickled", cache_dir=cache_dir, env=allowed)
    assert fine.code == 0, fine.stderr
    evil = run_cli("ensure", "hf:org/evil", cache_dir=cache_dir, env=allowed)
    assert evil.code == 4 and "posix.system" in evil.stderr and "refused" in evil.stderr, evil.stderr
