"""Scenarios 1-4 and 8 of the suite: cold downloads against the tool a user would pick instead (https vs
``curl -o``, one Hub file and a whole repo vs huggingface_hub, a rate-limited CDN vs ``aria2c``), and a
download killed and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness import (
    PY,
    MiB,
    Result,
    alternate,
    drop_page_cache_hint,
    largest_file_held,
    link_lfs,
    ratio,
    run,
)

if TYPE_CHECKING:
    from suite import Suite


def s1_https_vs_curl(suite: Suite) -> None:
    _, digest = suite.lfs_file("https.bin", suite.big)
    url, cache, out = f"{suite.nginx.url}/data/https.bin", suite.work / "c1", suite.work / "curl.out"
    a, b = alternate(
        lambda: suite.ours(cache, "ensure", url, "--digest", f"sha256:{digest}"),
        lambda: run(["curl", "-sS", "-o", str(out), url]),
        suite.rounds,
        lambda: (shutil.rmtree(cache, ignore_errors=True), out.unlink(missing_ok=True), drop_page_cache_hint()),
    )
    suite.add(ratio("1_cold_https_vs_curl", a, b, "curl -o", ">= 0.9"))


def s2_hf_single(suite: Suite) -> None:
    suite.single_repo()  # the Hub repo of one big file (scenarios 4-6 use it too)
    cache, hf_cache = suite.work / "c2", suite.work / "hf2"
    a, b = alternate(
        lambda: suite.ours(cache, "ensure", "hf:bench/single/model.bin"),
        lambda: suite.hf(
            f"from huggingface_hub import hf_hub_download as d; d('bench/single', "
            f"'model.bin', cache_dir={str(hf_cache)!r})"
        ),
        suite.rounds,
        lambda: (
            shutil.rmtree(cache, ignore_errors=True),
            shutil.rmtree(hf_cache, ignore_errors=True),
            drop_page_cache_hint(),
        ),
    )
    suite.add(ratio("2_cold_hf_file_vs_hf_hub_download", a, b, "hf_hub_download", ">= 1.5"))


def s3_hf_repo(suite: Suite) -> None:
    shard = (4 if suite.quick else 256) * MiB
    files = {
        f"model-{i:05d}-of-00008.safetensors": safetensors_file(suite, f"shard{i}.safetensors", shard)
        for i in range(1, 9)
    }
    index = {"metadata": {}, "weight_map": {f"w{i}": name for i, name in enumerate(files)}}
    small = {
        "config.json": b'{"model_type": "llama", "max_position_embeddings": 4096}',
        "tokenizer.json": b"{}",
        "tokenizer_config.json": b"{}",
        "generation_config.json": b"{}",
        "model.safetensors.index.json": json.dumps(index).encode(),
    }
    suite.hub_repo("bench/repo", files, small)
    cache, hf_cache = suite.work / "c3", suite.work / "hf3"
    a, b = alternate(
        lambda: suite.ours(cache, "ensure", "hf:bench/repo"),
        lambda: suite.hf(
            f"from huggingface_hub import snapshot_download as s; s('bench/repo', cache_dir={str(hf_cache)!r})"
        ),
        suite.rounds,
        lambda: (
            shutil.rmtree(cache, ignore_errors=True),
            shutil.rmtree(hf_cache, ignore_errors=True),
            drop_page_cache_hint(),
        ),
    )
    suite.add(ratio("3_cold_hf_repo_8_shards_vs_snapshot_download", a, b, "snapshot_download", ">= 1.5"))


def safetensors_file(suite: Suite, name: str, size: int) -> tuple[Path, str]:
    path = suite.www / "data" / name
    if not path.exists() or path.stat().st_size < size:
        n = size - 256
        header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        header += b" " * (-len(header) % 8)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(len(header).to_bytes(8, "little") + header)
            left = n
            while left:
                chunk = os.urandom(min(left, 16 * MiB))
                fh.write(chunk)
                left -= len(chunk)
    return path, link_lfs(suite.www, path)


def s4_rate_limited(suite: Suite) -> None:
    suite.lfs_file("https.bin", suite.big)
    url, cache, out = f"{suite.limited.url}/data/https.bin", suite.work / "c4", suite.work / "aria"

    def before() -> None:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    a, b = alternate(
        lambda: suite.ours(cache, "ensure", url),
        lambda: run(["aria2c", "-q", "-x8", "-s8", "-k1M", "-d", str(out), "-o", "f", url]),
        suite.rounds,
        before,
    )
    suite.add(ratio(f"4a_limit_rate_{suite.rate_limit}_vs_aria2c_x8", a, b, "aria2c -x8 -s8", ">= 0.9"))
    hub_limited = suite.work / "hf4"
    suite.hub.cdn.url = suite.limited.url
    try:
        rounds = suite.rounds  # hf_hub_download takes ~21 s a round here: three, so one slow round is no median
        c, d = alternate(
            lambda: suite.ours(cache, "ensure", "hf:bench/single/model.bin"),
            lambda: suite.hf(
                f"from huggingface_hub import hf_hub_download as d; d('bench/single', "
                f"'model.bin', cache_dir={str(hub_limited)!r})"
            ),
            rounds,
            lambda: (shutil.rmtree(cache, ignore_errors=True), shutil.rmtree(hub_limited, ignore_errors=True)),
        )
    finally:
        suite.hub.cdn.url = suite.nginx.url
    suite.add(ratio(f"4b_limit_rate_{suite.rate_limit}_vs_hf_hub_download", c, d, "hf_hub_download", ">= 6"))


def s8_kill_resume(suite: Suite) -> None:
    size = (24 if suite.quick else 256) * MiB
    path, digest = suite.lfs_file("kill.bin", size)
    commit = suite.hub_repo("bench/kill", {"model.bin": (path, digest)})
    suite.hub.cdn.url = suite.limited.url
    ours_factors: list[float] = []
    peer_factors: list[float] = []
    try:
        for _ in range(suite.rounds):  # A B A B: where the kill lands varies, so one kill is one sample
            ours_factors.append(
                kill_once(
                    suite,
                    lambda: [
                        PY,
                        "-m",
                        "model_provisioner",
                        "--cache-dir",
                        str(suite.work / "c8"),
                        "-q",
                        "ensure",
                        "hf:bench/kill/model.bin",
                    ],
                    suite.work / "c8" / "partial",
                    size,
                    digest,
                )
            )
            peer_factors.append(
                kill_once(
                    suite,
                    lambda: [
                        suite.hf_python,
                        "-c",
                        "from huggingface_hub import hf_hub_download as d; d('bench/kill', "
                        f"'model.bin', cache_dir={str(suite.work / 'hf8')!r})",
                    ],
                    suite.work / "hf8",
                    size,
                    digest,
                )
            )
    finally:
        suite.hub.cdn.url = suite.nginx.url
    del commit
    ours, peer = statistics.median(ours_factors), statistics.median(peer_factors)
    suite.add(
        Result(
            "8_kill_9_at_50pct_then_rerun",
            ours_factors,
            peer_factors,
            "hf_hub_download",
            "bytes/size <= 1.05",
            ours,
            unit="x",
            extra={
                "ours bytes/size": f"{ours:.3f} [{min(ours_factors):.3f}-{max(ours_factors):.3f}]",
                "peer bytes/size": f"{peer:.3f} [{min(peer_factors):.3f}-{max(peer_factors):.3f}]",
            },
        )
    )


def kill_once(suite: Suite, cmd: Callable[[], list[str]], watch: Path, size: int, digest: str) -> float:
    """Bytes the origin served for one ``kill -9`` once half the file has arrived, then a rerun, over the size.
    "Arrived" counts the partial file's allocated blocks: a download in parallel ranges writes a sparse file
    whose apparent size runs ahead of what it holds."""
    key = f"/lfs/{digest}"
    shutil.rmtree(watch.parent if watch.name == "partial" else watch, ignore_errors=True)
    before = suite.limited.bytes_served().get(key, 0)
    proc = subprocess.Popen(
        cmd(), env={**os.environ, **suite.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while largest_file_held(watch) < size // 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # nginx logs the cut connection
    run(cmd(), suite.env())
    time.sleep(0.2)
    return (suite.limited.bytes_served().get(key, 0) - before) / size
