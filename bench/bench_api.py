#!/usr/bin/env python3
"""HTTP API throughput (issue: control plane): requests/s of `GET /v1/models/{id}` and of a warm
`POST /v1/models/ensure`, from a bounded keep-alive httpx load loop on loopback.

    python bench/bench_api.py [--seconds 5] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(url: str, method: str, path: str, body: dict[str, object] | None, seconds: float, clients: int) -> float:
    import httpx

    counts = [0] * clients
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.monotonic() < stop:
                r = c.request(method, path, json=body)
                assert r.status_code == 200, r.text
                counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="mprov-apibench-"))
    model = work / "models" / "m.gguf"
    model.parent.mkdir()
    shutil.copy(ROOT / "examples" / "header-only-llama.gguf", model)
    settings = work / "settings.json"
    settings.write_text(json.dumps({"api_file_roots": [str(model.parent)]}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_provisioner", "--cache-dir", str(work / "cache"), "serve", "--port", str(port)],
        env={**os.environ, "MODEL_PROVISIONER_SETTINGS": str(settings)},
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(200):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        model_id = httpx.post(url + "/v1/models/ensure", json={"ref": str(model)}, timeout=30).json()["id"]
        get_rate = load(url, "GET", f"/v1/models/{model_id}", None, args.seconds, args.clients)
        print(f"api_get_model: ours {get_rate:,.0f} req/s ({args.clients} keep-alive clients, loopback)", flush=True)
        ensure_rate = load(url, "POST", "/v1/models/ensure", {"ref": str(model)}, args.seconds, args.clients)
        print(f"api_warm_ensure: ours {ensure_rate:,.0f} req/s ({args.clients} keep-alive clients, loopback)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
