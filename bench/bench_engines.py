#!/usr/bin/env python3
"""Engines (issue: engines). Run by hand; prints `name: ours X, peer Y, ratio R (goal G)`.

    python bench/bench_engines.py [--rounds 5]

1. warm `up` (the model already verified) to the first streamed token, against starting `llama-server -m
   <file>` by hand and waiting for its first token; A B A B. Goal: ours <= 1.2x the bare start + 100 ms.
2. `up` when the model must first be fetched (from a plain HTTP server on loopback): reported.

It uses the llama-server and the tiny model of the test suite (scripts/build_test_engines.py builds both).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import build_test_engines  # noqa: E402

CLI = [sys.executable, "-m", "model_provisioner"]


def first_token(url: str) -> None:
    body = {"prompt": "Hello", "n_predict": 1, "stream": True}
    with httpx.stream("POST", f"{url}/completion", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                return
    raise RuntimeError("no token streamed")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ours(cache: Path, model: str, binary: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [*CLI, "--cache-dir", str(cache), "up", model, "--binary", binary, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    first_token(json.loads(done.stdout)["url"])
    took = time.perf_counter() - start
    subprocess.run([*CLI, "--cache-dir", str(cache), "-q", "down", "--all"], check=True)
    return took


def bare(model: Path, binary: str) -> float:
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bare llama-server never became ready")
            time.sleep(0.01)
        first_token(url)
        return time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.0f}ms [{min(xs) * 1000:.0f}-{max(xs) * 1000:.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)  # measured as installed (pip byte-compiles)
    binary = str(next((build_test_engines.ENGINE_CACHE / "engines" / "llamacpp").glob("*/llama-server")))
    with tempfile.TemporaryDirectory(prefix="mprov-bench-engines-") as tmp:
        work = Path(tmp)
        model = build_test_engines.runnable_model(work)
        cache = work / "cache"
        subprocess.run([*CLI, "--cache-dir", str(cache), "-q", "ensure", str(model)], check=True)  # warm
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):
            a.append(ours(cache, str(model), binary))
            b.append(bare(model, binary))
        goal = 1.2 * statistics.median(b) + 0.1
        print(
            f"warm_up_to_first_token: ours {fmt(a)}, bare llama-server {fmt(b)}, "
            f"ratio {statistics.median(a) / statistics.median(b):.2f} (goal: ours <= {goal * 1000:.0f}ms)"
        )
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(work))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        cold: list[float] = []
        for i in range(args.rounds):
            url = f"http://127.0.0.1:{server.server_address[1]}/{model.name}"
            cold.append(ours(work / f"cold-{i}", url, binary))
        server.shutdown()
        size = model.stat().st_size / 1e6
        print(f"cold_up_to_first_token ({size:.1f} MB fetched over loopback, verified, then served): ours {fmt(cold)}")


if __name__ == "__main__":
    main()
