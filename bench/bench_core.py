#!/usr/bin/env python3
"""Core benchmarks (issue: core). Run by hand; prints `name: ours X, peer Y, ratio R (goal G)`.

    python bench/bench_core.py            # 1 GiB verification file
    python bench/bench_core.py --size-mib 256

1. warm in-process ensure_present calls/s on a registered model (goal >= 5,000/s)
2. CLI wall time of a warm `ensure` (goal <= 250 ms), against a bare `python -c pass` start as the floor
3. first-time verification throughput of a large file vs hashlib.file_digest (goal >= 0.9x), A B A B
4. GGUF metadata: our header reader vs gguf.GGUFReader on the same file
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(ours: Callable[[], object], peer: Callable[[], object], rounds: int) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(timed(ours))
        b.append(timed(peer))
    return a, b


def fmt(xs: list[float], unit: str = "s", scale: float = 1.0) -> str:
    return f"{statistics.median(xs) * scale:.3f}{unit} [{min(xs) * scale:.3f}-{max(xs) * scale:.3f}]"


def drop_caches_hint(path: Path) -> None:
    # keep both sides equally warm: read once so neither pays the first cold read
    with open(path, "rb") as fh:
        while fh.read(8 << 20):
            pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    # measure the program as installed: pip byte-compiles at install time, an editable checkout does not
    import compileall
    import logging

    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    from make_tiny_gguf import write_tiny_gguf

    from model_provisioner import ModelProvisioner

    logging.getLogger("model_provisioner").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="mprov-bench-") as tmp:
        tmpdir = Path(tmp)
        small = write_tiny_gguf(tmpdir / "small.gguf")
        cache = tmpdir / "cache"

        # 1. warm ensure/s
        with ModelProvisioner.file_only(cache) as prov:
            resolved = prov.ensure_present(small)
            digest = resolved.digest
            n = 20000
            start = time.perf_counter()
            for _ in range(n):
                prov.ensure_present(small, digest)
            rate = n / (time.perf_counter() - start)
        print(f"warm_ensure_in_process: ours {rate:,.0f} calls/s, goal 5,000/s, ratio {rate / 5000:.2f} (goal >= 1)")

        # 2. CLI warm ensure wall time
        cmd = [
            sys.executable,
            "-m",
            "model_provisioner",
            "--cache-dir",
            str(cache),
            "-q",
            "ensure",
            str(small),
        ]
        floor_cmd = [sys.executable, "-c", "pass"]
        subprocess.run(cmd, check=True, capture_output=True)
        cli_times, floor_times = alternate(
            lambda: subprocess.run(cmd, check=True, capture_output=True),
            lambda: subprocess.run(floor_cmd, check=True),
            10,
        )
        med = statistics.median(cli_times)
        print(
            f"warm_cli_ensure: ours {fmt(cli_times, 'ms', 1000)}, python-startup floor "
            f"{fmt(floor_times, 'ms', 1000)}, ratio to goal 250ms {med * 1000 / 250:.2f} (goal <= 1)"
        )

        # 3. first-time verification vs hashlib.file_digest
        big = tmpdir / "big.gguf"
        write_tiny_gguf(big, extra_tensor_bytes=args.size_mib << 20)
        drop_caches_hint(big)
        counter = iter(range(1000))

        def ours() -> None:
            with ModelProvisioner.file_only(tmpdir / f"cache-{next(counter)}") as p:
                p.ensure_present(big)

        def peer() -> None:
            with open(big, "rb") as fh:
                hashlib.file_digest(fh, "sha256")

        a, b = alternate(ours, peer, args.rounds)
        size = big.stat().st_size
        ours_rate = size / statistics.median(a) / 2**20
        peer_rate = size / statistics.median(b) / 2**20
        print(
            f"first_verification_{args.size_mib}MiB: ours {ours_rate:.0f} MiB/s {fmt(a)}, "
            f"hashlib.file_digest {peer_rate:.0f} MiB/s {fmt(b)}, ratio {ours_rate / peer_rate:.2f} (goal >= 0.9)"
        )

        # 4. GGUF metadata read
        try:
            import gguf
        except ImportError:
            print("gguf_metadata: skipped (pip install gguf)")
            return
        from model_provisioner.formats.gguf import read_gguf

        a, b = alternate(lambda: read_gguf(big), lambda: gguf.GGUFReader(str(big)), 20)
        print(
            f"gguf_metadata_read: ours {fmt(a, 'ms', 1000)}, gguf.GGUFReader {fmt(b, 'ms', 1000)}, "
            f"ratio {statistics.median(b) / statistics.median(a):.1f}x faster"
        )
        imp = subprocess.run([sys.executable, "-X", "importtime", "-c", "import gguf"], capture_output=True, text=True)
        last = imp.stderr.strip().splitlines()[-1] if imp.stderr else ""
        print(f"gguf_import_cost (cumulative us): {last.split('|')[1].strip() if '|' in last else '?'}")
        os.sync()


if __name__ == "__main__":
    main()
