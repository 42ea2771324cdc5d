#!/usr/bin/env python3
"""The gateway (``serve``'s OpenAI-compatible endpoint) against the engine it fronts (issue 25, "Measured"). Run by
hand:

    python bench/bench_gateway.py [--rounds 11]

Three copies of the shipped example with different weights (three models), the suite's llama-server, a ``serve``
with the three as aliases (``max_loaded: 2``). Every comparison alternates A B A B in one run:
1. a loaded model: the same streamed request through the gateway and to its engine directly: streamed tokens per
   second (events over the time from the first to the last) and time to the first content event;
2. cold: a request for a verified model whose engine is not running (unloaded before each round), first token,
   against a bare ``llama-server -m`` start to its first token;
3. 32 concurrent clients, 3 requests each over the three models (``max_loaded: 2``): answers by status, the most
   engines alive at once and the most for one model (sampled from the process table during the run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "examples"))
import build_test_engines  # noqa: E402
from bench_engines import bare, free_port  # noqa: E402
from bench_router import fmt, instances  # noqa: E402

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def stream(url: str, model: str, n: int, headers: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds to the first content event, content events per second from the first to the last)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "stream": True, "max_tokens": n}
    body["ignore_eos"] = True
    start = time.perf_counter()
    first = last = 0.0
    events = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"' in line:
                last = time.perf_counter()
                if not events:
                    first = last
                events += 1
    if events < 2:
        raise RuntimeError("fewer than two tokens")
    return first - start, (events - 1) / (last - first)


class Serve:
    def __init__(self, cache: Path, settings: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MODEL_PROVISIONER_SETTINGS": str(settings), "MODEL_PROVISIONER_API_TOKEN": TOKEN}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache), "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not self.healthy():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("serve never became ready")
            time.sleep(0.01)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def engine_url(self, alias: str) -> str:
        slots = httpx.get(f"{self.url}/v1/engines", headers=AUTH, timeout=30).json()["gateway"]
        return str(next(s["url"] for s in slots if s["model"] == alias))

    def unload(self, alias: str) -> None:
        httpx.post(f"{self.url}/v1/models/unload", json={"model": alias}, headers=AUTH, timeout=60)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def loaded(serve: Serve, rounds: int) -> None:
    stream(serve.url, "a", 8, AUTH)
    direct = serve.engine_url("a")
    via: list[tuple[float, float]] = []
    straight: list[tuple[float, float]] = []
    for _ in range(rounds):
        via.append(stream(serve.url, "a", 256, AUTH))
        straight.append(stream(direct, "a", 256))
    rate_via = statistics.median(r for _, r in via)
    rate_direct = statistics.median(r for _, r in straight)
    ttft_via = [t for t, _ in via]
    ttft_direct = [t for t, _ in straight]
    print(
        f"1 loaded model, {rounds} rounds: streamed tokens/s gateway {rate_via:.0f}, direct {rate_direct:.0f}, "
        f"ratio {rate_via / rate_direct:.3f}; first token gateway {fmt(ttft_via)}, direct {fmt(ttft_direct)}, "
        f"added {(statistics.median(ttft_via) - statistics.median(ttft_direct)) * 1000:.1f} ms"
    )


def cold(serve: Serve, model: Path, binary: str, rounds: int) -> None:
    ours: list[float] = []
    plain: list[float] = []
    for _ in range(rounds):
        serve.unload("b")
        ours.append(stream(serve.url, "b", 2, AUTH)[0])
        plain.append(bare(model, binary))
    added = (statistics.median(ours) - statistics.median(plain)) * 1000
    print(f"2 cold first token, {rounds} rounds: gateway {fmt(ours)}, bare llama-server {fmt(plain)}, +{added:.0f} ms")


def crowd(serve: Serve, models: dict[str, Path]) -> None:
    statuses: dict[int, int] = {}
    most = 0
    most_one = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal most, most_one
        while not done.is_set():
            counts = [instances(p) for p in models.values()]
            most, most_one = max(most, sum(counts)), max(most_one, *counts)
            done.wait(0.005)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3):
            body = {"model": rng.choice("abc"), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
            answer = httpx.post(f"{serve.url}/v1/chat/completions", json=body, headers=AUTH, timeout=300)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(client, range(32)))
    done.set()
    sampler.join()
    print(
        f"3 32 clients x 3 requests over 3 models, max_loaded 2, {time.perf_counter() - started:.1f} s: answers "
        f"{json.dumps(statuses)}, most engines at once {most}, most for one model {most_one}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    from make_runnable_gguf import write_runnable_gguf

    binary = str(next((build_test_engines.ENGINE_CACHE / "engines" / "llamacpp").glob("*/llama-server")))
    with tempfile.TemporaryDirectory(prefix="mprov-bench-gateway-") as tmp:
        work = Path(tmp)
        vocab = build_test_engines.test_vocab(work)
        models = {n: write_runnable_gguf(vocab, work / f"{n}.gguf", seed=i, tied=True) for i, n in enumerate("abc")}
        settings = work / "settings.json"
        aliases = [{"alias": n, "ref": str(p), "flags": ["--threads", "1"]} for n, p in models.items()]
        gateway = {"max_loaded": 2, "max_queue": 64}
        settings.write_text(
            json.dumps(
                {
                    "api_file_roots": [str(work)],
                    "engines": {"llamacpp": {"binary": binary}},
                    "gateway": gateway,
                    "models": aliases,
                }
            )
        )
        serve = Serve(work / "cache", settings)
        try:
            loaded(serve, args.rounds)
            cold(serve, models["b"], binary, args.rounds)
            crowd(serve, models)
        finally:
            serve.close()


if __name__ == "__main__":
    main()
