#!/usr/bin/env python3
"""Cache lifecycle benchmarks (issue: lifecycle):

1. `ls --json` on a catalog of 100,000 entries (goal < 2 s)
2. `gc` on the same catalog (goal < 5 s)
3. `verify --all` over 4 x 512 MiB vs hashing the same files one after another with hashlib (goal >= 1.6x)

    python bench/bench_lifecycle.py [--entries 100000] [--verify-mib 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]

from harness import Result, alternate, random_file, run, timed  # noqa: E402


def populate(cache: Path, n: int) -> None:
    from model_provisioner import ModelProvisioner, Settings

    with ModelProvisioner(Settings.from_env(cache_dir=cache)):
        pass  # creates the schema
    conn = sqlite3.connect(cache / "catalog.db")
    meta = json.dumps({"format": "gguf", "ctx_max": 4096, "architecture": "llama", "revision": "0" * 40})
    rows = []
    for i in range(n):
        blob = hashlib.sha256(str(i % (n // 2)).encode()).hexdigest()  # half the blobs shared by two ids
        rows.append(
            (
                f"hf:org{i % 997}/repo{i}/m-Q4_K_M.gguf",
                f"hf:org/repo{i}",
                "hf",
                f"{cache}/gguf/x{i}@{blob}",
                "Active",
                f"sha256:{blob}",
                4_000_000_000 + i,
                "gguf",
                "source_verified",
                None,
                0,
                i,
                i,
                i,
                None,
                meta,
                blob,
                None,
                0,
            )
        )
    conn.executemany(
        "INSERT INTO models (id, ref, scheme, local_path, lifecycle, digest, size_bytes, format, verification, "
        "expected_digest, strict, last_verified_ms, created_ms, last_used_ms, fingerprint, metadata, blob, error, "
        "pinned) VALUES (" + ",".join("?" * 19) + ")",
        rows,
    )
    conn.commit()
    conn.close()


def main() -> list[Result]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--verify-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mprov-lifebench-"))
    py = sys.executable
    results: list[Result] = []

    cache = work / f"catalog-{args.entries}"
    if not (cache / "catalog.db").exists():
        populate(cache, args.entries)
    ls_times = [
        timed(lambda: run([py, "-m", "model_provisioner", "--cache-dir", str(cache), "ls", "--json"]))
        for _ in range(args.rounds)
    ]
    results.append(
        Result(f"ls_json_{args.entries}_entries", ls_times, [2.0], "goal", "< 2 s", 2.0 / statistics.median(ls_times))
    )
    print(results[-1].line(), flush=True)
    gc_times = [
        timed(lambda: run([py, "-m", "model_provisioner", "--cache-dir", str(cache), "gc", "--dry-run", "--json"]))
        for _ in range(args.rounds)
    ]
    gc_times.append(timed(lambda: run([py, "-m", "model_provisioner", "--cache-dir", str(cache), "gc", "--json"])))
    results.append(
        Result(f"gc_{args.entries}_entries", gc_times, [5.0], "goal", "< 5 s", 5.0 / statistics.median(gc_times))
    )
    print(results[-1].line(), flush=True)

    vcache = work / "verify-cache"
    files = [random_file(work / "data" / f"v{i}.bin", args.verify_mib << 20) for i in range(4)]
    if not (vcache / "catalog.db").exists():
        from model_provisioner import ModelProvisioner, Settings

        with ModelProvisioner(Settings.from_env(cache_dir=vcache)) as prov:
            for i, f in enumerate(files):
                prov.register_model(f"https://bench.example/v{i}.bin", f)

    def hashlib_single_core() -> None:
        for f in files:
            with open(f, "rb") as fh:
                hashlib.file_digest(fh, "sha256")

    def ours() -> None:
        run([py, "-m", "model_provisioner", "--cache-dir", str(vcache), "-q", "verify", "--all"])

    for f in files:  # both sides read from the page cache
        with open(f, "rb") as fh:
            hashlib.file_digest(fh, "sha256")
    a, b = alternate(ours, hashlib_single_core, args.rounds)
    results.append(
        Result(
            f"verify_all_4x{args.verify_mib}MiB_vs_hashlib_one_core",
            a,
            b,
            "hashlib (1 core)",
            ">= 1.6",
            statistics.median(b) / statistics.median(a),
            extra={"cores": str(os.cpu_count())},
        )
    )
    print(results[-1].line(), flush=True)
    return results


if __name__ == "__main__":
    main()
