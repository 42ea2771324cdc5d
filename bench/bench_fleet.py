#!/usr/bin/env python3
"""Fleets (issue: fleet). Run by hand; prints one line per scenario.

    python bench/bench_fleet.py [--size-mib 256] [--nodes 8]

Eight "nodes" (separate caches, concurrent processes) pull one model from an origin registry (Debian's
docker-registry): directly, or through a second docker-registry in proxy mode (a pull-through mirror,
``registry_mirrors``). Reports the wall time of each and the origin's bytes per node, counted from the
origin's access log.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from make_tiny_gguf import write_tiny_gguf  # noqa: E402
from tests.servers.registry import Registry  # noqa: E402

CLI = [sys.executable, "-m", "model_provisioner"]


def origin_bytes(registry: Registry) -> int:
    registry.log.flush()
    total = 0
    for line in (registry.workdir / "registry.log").read_text(errors="replace").splitlines():
        got = re.search(r'"GET /v2/[^"]*/blobs/[^"]*" (200|206) (\d+)', line)
        if got:
            total += int(got.group(2))
    return total


def nodes(work: Path, name: str, ref: str, count: int, settings: Path | None) -> float:
    env = {"MODEL_PROVISIONER_SETTINGS": str(settings)} if settings else {}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*CLI, "--cache-dir", str(work / f"{name}-{i}"), "-q", "ensure", ref],
            env={**__import__("os").environ, **env},
        )
        for i in range(count)
    ]
    if any(p.wait(timeout=1800) for p in procs):
        raise RuntimeError(f"{name}: a node failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--nodes", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mprov-bench-fleet-") as tmp:
        work = Path(tmp)
        origin = Registry(work / "origin")
        mirror = Registry(work / "mirror", proxy_of=origin.url)
        try:
            model = write_tiny_gguf(work / "m.gguf", extra_tensor_bytes=args.size_mib << 20)
            size = model.stat().st_size
            subprocess.run([*CLI, "--cache-dir", str(work / "publisher"), "-q", "ensure", str(model)], check=True)
            ref = f"oci://{origin.host}/fleet/model:v1"
            subprocess.run([*CLI, "--cache-dir", str(work / "publisher"), "-q", "push", str(model), ref], check=True)
            settings = work / "settings.json"
            settings.write_text(json.dumps({"registry_mirrors": {origin.host: [{"url": mirror.url}]}}))
            before = origin_bytes(origin)
            direct = nodes(work, "direct", ref, args.nodes, None)
            direct_bytes = origin_bytes(origin) - before
            before = origin_bytes(origin)
            mirrored = nodes(work, "mirrored", ref, args.nodes, settings)
            mirrored_bytes = origin_bytes(origin) - before
            ref2 = f"oci://{origin.host}/fleet/model2:v1"
            subprocess.run([*CLI, "--cache-dir", str(work / "publisher"), "-q", "push", str(model), ref2], check=True)
            before = origin_bytes(origin)
            first = nodes(work, "first", ref2, 1, settings)
            rest = nodes(work, "rest", ref2, args.nodes - 1, settings)
            warmed_bytes = origin_bytes(origin) - before
            n = args.nodes
            print(
                f"fleet_{n}_nodes_{args.size_mib}MiB_direct: {direct:.2f}s, origin bytes/node "
                f"{direct_bytes / n / size:.2f}x the model"
            )
            print(
                f"fleet_{n}_nodes_{args.size_mib}MiB_cold_mirror_at_once: {mirrored:.2f}s, origin bytes/node "
                f"{mirrored_bytes / n / size:.2f}x the model ({mirrored_bytes / size:.2f}x in all)"
            )
            print(
                f"fleet_{n}_nodes_{args.size_mib}MiB_mirror_one_then_{n - 1}: {first:.2f}s + {rest:.2f}s, origin "
                f"bytes/node {warmed_bytes / n / size:.2f}x the model ({warmed_bytes / size:.2f}x in all)"
            )
        finally:
            mirror.close()
            origin.close()


if __name__ == "__main__":
    main()
