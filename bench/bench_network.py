#!/usr/bin/env python3
"""Network benchmarks (issue: network), against peers in the same run, over loopback:

1. cold https:// 1 GiB from nginx, verification included, vs `curl -o` (goal >= 0.9x)
2. cold hf: single 1 GiB file via the fake Hub + nginx CDN vs huggingface_hub.hf_hub_download (goal >= 1.5x)
3. nginx `limit_rate 50m` per connection, 1 GiB: ours (8 connections) vs `aria2c -x8 -s8` (goal >= 0.9x)

    python bench/bench_network.py [--size-mib 1024] [--rounds 3]

Ratios are peer time / our time (higher is better for us). Needs nginx, curl, aria2c (scripts/test.sh
installs them) and huggingface_hub.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Result, alternate, drop_page_cache_hint, fresh, random_file, run, speed_ratio  # noqa: E402


def main() -> list[Result]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--skip", action="append", default=[], help="scenario names to skip")
    args = parser.parse_args()

    # measure the program as installed: pip byte-compiles at install time, an editable checkout does not
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    from tests.servers.hub import FakeHub
    from tests.servers.nginx import Nginx

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mprov-netbench-"))
    size = args.size_mib << 20
    data_root = work / "www"
    big = random_file(data_root / "big.bin", size)
    sha = hashlib.sha256(big.read_bytes()).hexdigest() if size <= 2 << 30 else None
    (data_root / "lfs").mkdir(exist_ok=True)
    lfs = data_root / "lfs" / str(sha)
    if not lfs.exists():
        os.link(big, lfs)
    results: list[Result] = []
    py = sys.executable
    settings = work / "settings.json"
    settings.write_text(json.dumps({"transfer": {"connections": 8}}))
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings)}

    nginx = Nginx(data_root, work / "nginx")
    try:
        url = f"{nginx.url}/big.bin"
        if "https" not in args.skip:
            ours_cache, out = work / "c-https", work / "curl.out"

            def ours_https() -> None:
                run(
                    [
                        py,
                        "-m",
                        "model_provisioner",
                        "--cache-dir",
                        str(ours_cache),
                        "-q",
                        "ensure",
                        url,
                        "--digest",
                        f"sha256:{sha}",
                    ],
                    env,
                )

            def before() -> None:
                shutil.rmtree(ours_cache, ignore_errors=True)
                out.unlink(missing_ok=True)
                drop_page_cache_hint()

            a, b = alternate(ours_https, lambda: run(["curl", "-sS", "-o", str(out), url]), args.rounds, before)
            results.append(speed_ratio(f"cold_https_{args.size_mib}MiB_vs_curl", a, b, "curl -o", ">= 0.9"))
            print(results[-1].line(), flush=True)

            # like for like: we fsync before the atomic rename (a crash never leaves a torn blob); curl does not
            def curl_durable() -> None:
                run(["curl", "-sS", "-o", str(out), url])
                run(["sync", str(out)])

            a, b = alternate(ours_https, curl_durable, args.rounds, before)
            results.append(
                speed_ratio(f"cold_https_{args.size_mib}MiB_vs_curl_durable", a, b, "curl -o + sync FILE", "(context)")
            )
            print(results[-1].line(), flush=True)

        if "hf" not in args.skip:
            hub = FakeHub(work / "hub")
            hub.cdn.url = nginx.url  # LFS bytes come from nginx
            hub.add_repo("bench/big", {"model.gguf": b"placeholder"})
            # point the entry at the big blob that nginx serves
            repo = hub.repos["bench/big"]
            entry = next(iter(repo.commits.values()))["model.gguf"]
            entry.lfs_sha256, entry.size, entry.stored = sha, size, lfs
            ours_cache, hf_cache = work / "c-hf", work / "hf-cache"
            hf_env = {
                **env,
                "HF_ENDPOINT": hub.url,
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_ENABLE_HF_TRANSFER": "0",
            }

            def before_hf() -> None:
                shutil.rmtree(ours_cache, ignore_errors=True)
                shutil.rmtree(hf_cache, ignore_errors=True)
                drop_page_cache_hint()

            # the payload is random bytes, so the Hub entry is named .bin (stored as a plain file; a .gguf name
            # would fail our format check after the download, which is not what this scenario measures)
            entry.path = "model.bin"
            repo.commits[repo.branches["main"]] = {"model.bin": entry}

            def ours_hf_bin() -> None:
                run(
                    [
                        py,
                        "-m",
                        "model_provisioner",
                        "--cache-dir",
                        str(ours_cache),
                        "-q",
                        "ensure",
                        "hf:bench/big/model.bin",
                    ],
                    hf_env,
                )

            def peer_hf_bin() -> None:
                run(
                    [
                        py,
                        "-c",
                        "from huggingface_hub import hf_hub_download; "
                        f"hf_hub_download('bench/big', 'model.bin', cache_dir={str(hf_cache)!r})",
                    ],
                    hf_env,
                )

            a, b = alternate(ours_hf_bin, peer_hf_bin, args.rounds, before_hf)
            results.append(
                speed_ratio(f"cold_hf_{args.size_mib}MiB_vs_hf_hub_download", a, b, "hf_hub_download", ">= 1.5")
            )
            print(results[-1].line(), flush=True)
            hub.close()
    finally:
        nginx.close()

    if "limit" not in args.skip:
        limited = Nginx(data_root, work / "nginx-limited", limit_rate="50m")
        try:
            url = f"{limited.url}/big.bin"
            ours_cache, out_dir = work / "c-limit", work / "aria"

            def before_limit() -> None:
                shutil.rmtree(ours_cache, ignore_errors=True)
                fresh(out_dir)
                drop_page_cache_hint()

            a, b = alternate(
                lambda: run([py, "-m", "model_provisioner", "--cache-dir", str(ours_cache), "-q", "ensure", url], env),
                lambda: run(
                    [
                        "aria2c",
                        "-q",
                        "-x8",
                        "-s8",
                        "-k1M",
                        "--allow-overwrite=true",
                        "-d",
                        str(out_dir),
                        "-o",
                        "big.bin",
                        url,
                    ]
                ),
                args.rounds,
                before_limit,
            )
            results.append(
                speed_ratio(f"limit_rate_50m_{args.size_mib}MiB_vs_aria2c_x8", a, b, "aria2c -x8 -s8", ">= 0.9")
            )
            print(results[-1].line(), flush=True)
        finally:
            limited.close()
    return results


if __name__ == "__main__":
    main()
