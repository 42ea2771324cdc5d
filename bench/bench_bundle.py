#!/usr/bin/env python3
"""Export then import of a 1 GiB model through an air-gapped bundle, against ``cp`` + ``sha256sum`` of the same
bytes (issue 28, "Measured"). Run by hand:

    python bench/bench_bundle.py [--size-mib 1024] [--rounds 2]

A model of random bytes is served on 127.0.0.1 and provisioned once into a cache. Each round, alternating with
the peer (A B A B): ``export URL --to DIR`` (hard links: the directory is on the cache's filesystem) then
``--offline import DIR`` into an empty cache (every blob copied into the store while hashed, laid out,
registered); the same with ``--to FILE.tar`` (export copies while hashing into the tar; import reads it back); the
peer copies the file with ``cp`` and hashes the copy with ``sha256sum`` (what a careful person does by hand). Wall
time of the commands as a user runs them (each a fresh process), and CPU time of the children.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-m", "model_provisioner"]


def timed(commands: list[list[str]]) -> tuple[float, float]:
    """Wall seconds and children's CPU seconds of running ``commands`` one after the other."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bundle-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        www = root / "www"
        www.mkdir()
        model = www / "model.bin"
        with open(model, "wb") as out:
            for _ in range(args.size_mib // 64):
                out.write(os.urandom(64 << 20))
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/model.bin"
        cache = root / "cache"
        subprocess.run([*CLI, "--cache-dir", str(cache), "ensure", url, "-q"], check=True, stdout=subprocess.DEVNULL)
        results: dict[str, list[tuple[float, float]]] = {"dir": [], "tar": [], "cp+sha256sum": []}
        for round_ in range(args.rounds):
            for kind in ("dir", "tar", "cp+sha256sum"):
                work = root / f"round-{round_}-{kind}"
                work.mkdir()
                if kind == "cp+sha256sum":
                    copy = work / "model.bin"
                    results[kind].append(timed([["cp", str(model), str(copy)], ["sha256sum", str(copy)]]))
                else:
                    bundle = work / ("bundle.tar" if kind == "tar" else "bundle")
                    far = work / "far"
                    export = [*CLI, "--cache-dir", str(cache), "export", url, "--to", str(bundle), "-q"]
                    load = [*CLI, "--cache-dir", str(far), "--offline", "import", str(bundle), "-q"]
                    results[kind].append(timed([export, load]))
                shutil.rmtree(work)
        server.shutdown()
    peer_wall = statistics.median(w for w, _ in results["cp+sha256sum"])
    print(f"{args.size_mib} MiB model, {args.rounds} rounds alternating, medians")
    for kind, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"  {kind:14} wall {wall:6.2f} s  cpu {cpu:6.2f} s  ({wall / peer_wall:.2f}x cp+sha256sum)")


if __name__ == "__main__":
    main()
