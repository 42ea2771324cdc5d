#!/usr/bin/env python3
"""The warm paths of this tree against another checkout of the project (A B A B). Run by hand:

    git worktree add /tmp/before <commit>
    python bench/bench_compare.py --baseline /tmp/before [--rounds 7]

1. warm `up` (the model already verified) to the first streamed token, on the llama-server and tiny model
   of the test suite (scripts/build_test_engines.py);
2. a warm CLI `ensure` of a public https model (fetched once from a loopback origin, then answered from the
   catalog: no socket);
3. warm in-process `ensure_present` calls per second on the same entry.

Each tree runs with its own ``src`` first on PYTHONPATH and its own caches; the lines read
`name: ours X, baseline Y, ratio R` with R = ours / baseline (1.00: unchanged).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import build_test_engines  # noqa: E402
from bench_engines import first_token  # noqa: E402

IN_PROCESS = """
import sys, time
from model_provisioner import ModelProvisioner, Settings
with ModelProvisioner(Settings.from_env(cache_dir=sys.argv[1])) as prov:
    prov.ensure_present(sys.argv[2])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        prov.ensure_present(sys.argv[2])
        n += 1
    print(n / (time.perf_counter() - start))
"""


def env_for(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def cli(src: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        check=True,
        env=env_for(src),
    )


def warm_up(src: Path, cache: Path, model: Path, binary: str) -> float:
    start = time.perf_counter()
    done = cli(src, cache, "up", str(model), "--binary", binary, "--json")
    first_token(json.loads(done.stdout)["url"])
    took = time.perf_counter() - start
    cli(src, cache, "-q", "down", "--all")
    return took


def warm_ensure(src: Path, cache: Path, url: str) -> float:
    start = time.perf_counter()
    cli(src, cache, "-q", "ensure", url)
    return time.perf_counter() - start


def in_process(src: Path, cache: Path, url: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(cache), url],
        capture_output=True,
        text=True,
        check=True,
        env=env_for(src),
    )
    return float(done.stdout.strip())


def line(name: str, ours: list[float], base: list[float], unit: str, scale: float) -> str:
    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs) * scale:.1f}{unit} [{min(xs) * scale:.1f}-{max(xs) * scale:.1f}]"

    ratio = statistics.median(ours) / statistics.median(base)
    return f"{name}: ours {fmt(ours)}, baseline {fmt(base)}, ratio {ratio:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of this project")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import compileall

    trees = {"ours": ROOT / "src", "baseline": args.baseline.resolve() / "src"}
    for src in trees.values():
        compileall.compile_dir(str(src), quiet=1)  # measured as installed (pip byte-compiles)
    binary = str(next((build_test_engines.ENGINE_CACHE / "engines" / "llamacpp").glob("*/llama-server")))
    with tempfile.TemporaryDirectory(prefix="mprov-bench-compare-") as tmp:
        work = Path(tmp)
        model = build_test_engines.runnable_model(work)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(work))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/{model.name}"
        results: dict[str, dict[str, list[float]]] = {k: {"up": [], "ensure": [], "rate": []} for k in trees}
        for name, src in trees.items():  # each tree its own caches, warmed first
            cli(src, work / f"{name}-up", "-q", "ensure", str(model))
            cli(src, work / f"{name}-https", "-q", "ensure", url)
        for _ in range(args.rounds):
            for name, src in trees.items():  # A B A B
                results[name]["up"].append(warm_up(src, work / f"{name}-up", model, binary))
                results[name]["ensure"].append(warm_ensure(src, work / f"{name}-https", url))
                results[name]["rate"].append(in_process(src, work / f"{name}-https", url))
        server.shutdown()
    ours, base = results["ours"], results["baseline"]
    print(line("warm_up_to_first_token", ours["up"], base["up"], "ms", 1000))
    print(line("warm_cli_ensure_https", ours["ensure"], base["ensure"], "ms", 1000))
    print(line("warm_in_process_ensures_per_s", ours["rate"], base["rate"], "/s", 1))


if __name__ == "__main__":
    main()
