#!/usr/bin/env python3
"""llama-server's router mode against one process per pool (issue 25, item 5: measure, then decide). Run by hand:

    python bench/bench_router.py [--rounds 5]

Three copies of the shipped example (three model files), the suite's llama-server:
1. cold first token of one model: a router started with a preset naming the three (``--models-max 2``), against
   ``up`` of that model (our pool);
2. first token of a model not loaded yet, the router already running (load on demand), against ``up`` of a
   second pool while the first runs;
3. single flight: 8 concurrent first requests for one model on a fresh router: how many instances of it ran
   (counted from the process table while they were served);
4. eviction: the three models asked in turn with ``--models-max 2``: the most instances alive at once;
5. streaming through the router against the same request sent to the instance directly: tokens per second.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from bench_engines import free_port, wait_healthy  # noqa: E402

CLI = [sys.executable, "-m", "model_provisioner"]


def chat(url: str, model: str, n: int = 1) -> float:
    """Seconds to the first streamed content event (the whole answer is read)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "stream": True, "max_tokens": n}
    start = time.perf_counter()
    first = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if first is None and line.startswith("data: ") and '"content":"' in line:
                first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("no token")
    return first


def instances(model: Path) -> int:
    """Processes running ``model`` now (router children carry ``--model <path>``)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(model).encode() in cmdline:
                count += 1
    return count


class Router:
    def __init__(self, binary: str, models: list[Path], work: Path, models_max: int = 2) -> None:
        preset = work / "preset.ini"
        lines = ["version = 1", "[*]", "c = 512", "parallel = 1"]
        for m in models:
            lines += [f"[{m.stem}]", f"model = {m}"]
        preset.write_text("\n".join(lines) + "\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                binary,
                "--models-preset",
                str(preset),
                "--models-max",
                str(models_max),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-webui",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_healthy(self.url, "the router")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.0f}ms [{min(xs) * 1000:.0f}-{max(xs) * 1000:.0f}]"


def up(cache: Path, model: Path, binary: str, pool: str) -> str:
    done = subprocess.run(
        [*CLI, "--cache-dir", str(cache), "up", str(model), "--binary", binary, "--pool", pool, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(done.stdout)["url"])


def starts(binary: str, models: list[Path], cache: Path, work: Path, rounds: int) -> None:
    """Rows 1 and 2, A B A B."""
    cold_router, cold_up, second_router, second_up = [], [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        router = Router(binary, models, work)
        try:
            chat(router.url, "alpha")
            cold_router.append(time.perf_counter() - start)
            second_router.append(chat(router.url, "beta"))
        finally:
            router.close()
        start = time.perf_counter()
        chat(up(cache, models[0], binary, "a"), f"file:{models[0]}")
        cold_up.append(time.perf_counter() - start)
        start = time.perf_counter()
        chat(up(cache, models[1], binary, "b"), f"file:{models[1]}")
        second_up.append(time.perf_counter() - start)
        subprocess.run([*CLI, "--cache-dir", str(cache), "-q", "down", "--all"], check=True)
    print(f"1 cold first token: router {fmt(cold_router)}, up {fmt(cold_up)}")
    print(f"2 first token of a second model: router (load on demand) {fmt(second_router)}, up {fmt(second_up)}")


def single_flight(router: Router, model: Path) -> None:
    most = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most[0] = max(most[0], instances(model))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=chat, args=(router.url, model.stem, 4)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    print(f"3 single flight: 8 concurrent first requests for one model -> at most {most[0]} instance(s)")


def eviction(router: Router, models: list[Path]) -> None:
    peak = 0
    for _ in range(3):
        for m in models:
            chat(router.url, m.stem, 2)
            peak = max(peak, sum(instances(x) for x in models))
    print(f"4 eviction with --models-max 2 over 3 models asked in turn: at most {peak} instances at once")


def instance_port(model: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(model).encode() in argv and b"--port" in argv:
                return int(argv[argv.index(b"--port") + 1])
    raise RuntimeError(f"no instance of {model}")


def tokens_per_s(url: str, model: str, n: int = 128) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": n, "stream": True}
    start = time.perf_counter()
    events = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if '"content":"' in line:
                events += 1
    return events / (time.perf_counter() - start)


def streaming(router: Router, model: Path, rounds: int) -> None:
    chat(router.url, model.stem)
    direct = f"http://127.0.0.1:{instance_port(model)}"
    via_router: list[float] = []
    straight: list[float] = []
    for _ in range(rounds):
        via_router.append(tokens_per_s(router.url, model.stem))
        straight.append(tokens_per_s(direct, model.stem))
    ratio = statistics.median(via_router) / statistics.median(straight)
    print(
        f"5 streamed tokens/s: router {statistics.median(via_router):.0f}, direct {statistics.median(straight):.0f}, "
        f"ratio {ratio:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binary = str(next((build_test_engines.ENGINE_CACHE / "engines" / "llamacpp").glob("*/llama-server")))
    with tempfile.TemporaryDirectory(prefix="mprov-bench-router-") as tmp:
        work = Path(tmp)
        example = build_test_engines.runnable_model(work)
        models = []
        for name in ("alpha", "beta", "gamma"):
            copy = work / f"{name}.gguf"
            shutil.copyfile(example, copy)
            models.append(copy)
        cache = work / "cache"
        for m in models:
            subprocess.run([*CLI, "--cache-dir", str(cache), "-q", "ensure", str(m)], check=True)
        starts(binary, models, cache, work, args.rounds)
        router = Router(binary, models, work)
        try:
            single_flight(router, models[0])
            eviction(router, models)
            streaming(router, models[2], args.rounds)
        finally:
            router.close()


if __name__ == "__main__":
    main()
