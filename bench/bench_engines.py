#!/usr/bin/env python3
"""Engines (issue: engines). Run by hand; prints `name: ours X, peer Y, ratio R (goal G)`.

    python bench/bench_engines.py [--rounds 5]

1. warm `up` (the model already verified) to the first streamed token, against starting `llama-server -m
   <file>` by hand and waiting for its first token; A B A B. Goal: ours <= 1.2x the bare start + 100 ms.
2. `up` when the model must first be fetched (from a plain HTTP server on loopback): reported.
3. `run MODEL "Hello" --max-tokens 1`, warm, to its first streamed byte on stdout, against the same bare
   `llama-server -m` start; A B A B. Goal: ours <= the bare start + 150 ms.
4. `engines install llamacpp --from oci://…` of the suite's engine pushed to a local registry, into an empty
   cache: seconds (goal: not minutes).

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


def wait_healthy(url: str, what: str) -> None:
    """Poll ``GET /health`` every 10 ms until 200 (bounded: 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} never became ready")
        time.sleep(0.01)


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
        wait_healthy(url, "bare llama-server")
        first_token(url)
        return time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_first_byte(cache: Path, model: str, binary: str) -> float:
    """``run`` from its start to the first byte of the answer on stdout (the engine is stopped after)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*CLI, "--cache-dir", str(cache), "-q", "run", model, "Hello", "--max-tokens", "1", "--binary", binary],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    took = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait(timeout=60) != 0 or not first:
        raise RuntimeError("run failed")
    return took


def install_from_registry(rounds: int, work: Path) -> list[float]:
    """The suite's engine, recorded and pushed to a local docker-registry, installed into fresh caches."""
    sys.path.insert(0, str(ROOT))
    from tests.servers.registry import Registry

    sdist = build_test_engines.fetch_test_assets.CACHE / build_test_engines.fetch_test_assets.SDIST
    team = ["--cache-dir", str(build_test_engines.ENGINE_CACHE), "-q"]
    digest = f"sha256:{build_test_engines.fetch_test_assets.SDIST_SHA256}"
    source = ["--source", f"file:{sdist}", "--digest", digest, "--subdir", build_test_engines.SOURCE_SUBDIR]
    subprocess.run([*CLI, *team, "engines", "install", "llamacpp", *source], check=True, capture_output=True)
    registry = Registry(work / "registry")
    try:
        target = f"oci://{registry.host}/team/llama-server:bench"
        pushed = subprocess.run(
            [*CLI, *team, "engines", "push", "llamacpp", target], check=True, capture_output=True, text=True
        )
        ref = pushed.stdout.strip()
        took = []
        for i in range(rounds):
            start = time.perf_counter()
            subprocess.run(
                [
                    *CLI,
                    "--cache-dir",
                    str(work / f"install-{i}"),
                    "-q",
                    "engines",
                    "install",
                    "llamacpp",
                    "--from",
                    ref,
                ],
                check=True,
                capture_output=True,
            )
            took.append(time.perf_counter() - start)
        return took
    finally:
        registry.close()


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
        r: list[float] = []
        b = []
        for _ in range(args.rounds):
            r.append(run_first_byte(cache, str(model), binary))
            b.append(bare(model, binary))
        goal = statistics.median(b) + 0.15
        print(
            f"warm_run_to_first_streamed_byte: ours {fmt(r)}, bare llama-server {fmt(b)}, "
            f"ratio {statistics.median(r) / statistics.median(b):.2f} (goal: ours <= {goal * 1000:.0f}ms)"
        )
        installs = install_from_registry(args.rounds, work)
        print(f"engines_install_from_local_registry (empty cache, verified, no compiler): ours {fmt(installs)}")


if __name__ == "__main__":
    main()
