"""Scenarios 13 and 14 of the suite: a CPU-bound Python origin (wall time vs ``curl -o``, CPU seconds per GiB
vs ``curl -o`` + ``hashlib.file_digest``), and a rate-limited link (a ``tc`` token bucket on a veth pair into a
network namespace this bench makes itself) vs ``aria2c -x16 -s16``. Both alternate ours and the peer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import Result, chosen_connections, drop_page_cache_hint, random_file, run, run_stderr
from tests.servers.nginx import free_port

MiB = 1 << 20
GiB = 1 << 30
PY = sys.executable
HERE = Path(__file__).resolve().parent
NETNS = "mprov-bench"


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], netns: str | None = None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        probe = ["ip", "netns", "exec", netns] if netns else []
        probe += [PY, "-c", f"import socket; socket.create_connection(({host!r}, {port}), 0.5).close()"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"origin on {host}:{port} did not start")


def _cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its children, user + sys) of ``fn``."""
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime - b.ru_utime + a.ru_stime - b.ru_stime for a, b in zip(after, before, strict=True))
    return wall, cpu


def s13_cpu_bound_origin(suite: Any) -> None:
    sizes = (16, 32) if suite.quick else (512, 1024)
    for label, size_mib in zip(("13a", "13b"), sizes, strict=True):
        _cpu_bound_origin(suite, label, size_mib)


def _cpu_bound_origin(suite: Any, label: str, size_mib: int) -> None:
    path = random_file(suite.www / "data" / f"cpu-{size_mib}.bin", size_mib * MiB)
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    port = free_port()
    origin = subprocess.Popen([PY, str(HERE / "pyorigin.py"), str(suite.www / "data"), str(port)])
    try:
        _wait_port("127.0.0.1", port, origin)
        url = f"http://127.0.0.1:{port}/{path.name}"
        cache, out = suite.work / f"c13-{size_mib}", suite.work / "curl13.out"
        ours: list[tuple[float, float]] = []
        peer: list[tuple[float, float, float]] = []
        logs: list[str] = []
        cmd = [
            PY,
            "-m",
            "model_provisioner",
            "--cache-dir",
            str(cache),
            "-v",
            "ensure",
            url,
            "--digest",
            f"sha256:{digest}",
        ]
        for _ in range(suite.rounds):
            shutil.rmtree(cache, ignore_errors=True)
            drop_page_cache_hint()
            ours.append(_cpu(lambda: logs.append(run_stderr(cmd, suite.env()))))
            out.unlink(missing_ok=True)
            drop_page_cache_hint()
            wall, curl_cpu = _cpu(lambda: run(["curl", "-sS", "-o", str(out), url]))
            _, hash_cpu = _cpu(lambda: _file_digest(out))
            peer.append((wall, curl_cpu, hash_cpu))
        out.unlink(missing_ok=True)
    finally:
        origin.terminate()
        origin.wait(10)
    gib = size_mib * MiB / GiB
    ours_cpu = statistics.median(c for _, c in ours) / gib
    peer_cpu = statistics.median(c + h for _, c, h in peer) / gib
    walls, peer_walls = [w for w, _ in ours], [w for w, _, _ in peer]
    chosen = chosen_connections(logs[-1])
    suite.choices[f"{label} CPU-bound origin"] = (chosen, size_mib * MiB / statistics.median(walls) / 1e6)
    suite.add(
        Result(
            f"{label}_{size_mib}MiB_cpu_bound_python_origin_vs_curl",
            walls,
            peer_walls,
            "curl -o",
            ">= 0.9",
            statistics.median(peer_walls) / statistics.median(walls),
            extra={
                "cpu s/GiB ours": f"{ours_cpu:.2f}",
                "curl -o + file_digest": f"{peer_cpu:.2f}",
                "cpu ratio": f"{ours_cpu / peer_cpu:.2f} (goal <= 1.2)",
                "connections": str(chosen),
            },
        )
    )


def _file_digest(path: Path) -> None:
    with open(path, "rb") as fh:
        hashlib.file_digest(fh, "sha256")


@contextlib.contextmanager
def shaped_link(rate: str) -> Iterator[tuple[str, str]]:
    """A network namespace behind a veth pair whose far end sends through ``tc tbf rate RATE``: (host address,
    namespace). Needs root and iproute2; everything is removed afterwards."""
    host, far = "10.231.7.1", "10.231.7.2"
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)  # a leftover of an interrupted run
    steps = [
        ["ip", "netns", "add", NETNS],
        ["ip", "link", "add", "mprov-bh", "type", "veth", "peer", "name", "mprov-bn"],
        ["ip", "link", "set", "mprov-bn", "netns", NETNS],
        ["ip", "addr", "add", f"{host}/24", "dev", "mprov-bh"],
        ["ip", "link", "set", "mprov-bh", "up"],
        ["ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{far}/24", "dev", "mprov-bn"],
        ["ip", "netns", "exec", NETNS, "ip", "link", "set", "mprov-bn", "up"],
        ["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"],
        [
            "ip",
            "netns",
            "exec",
            NETNS,
            "tc",
            "qdisc",
            "add",
            "dev",
            "mprov-bn",
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "1mb",
            "latency",
            "50ms",
        ],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield far, NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        subprocess.run(["ip", "link", "del", "mprov-bh"], capture_output=True)


def s14_shaped_link(suite: Any) -> None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        print("14_tbf_link: skipped (needs root, ip and tc)", flush=True)
        return
    size = (64 if suite.quick else 1024) * MiB
    rate = "400mbit"
    path = random_file(suite.www / "data" / "tbf.bin", size)
    settings = suite.work / "settings-16.json"
    settings.write_text(json.dumps({"transfer": {"connections": 16}}))
    with shaped_link(rate) as (address, netns):
        port = 8080
        origin = subprocess.Popen(
            ["ip", "netns", "exec", netns, PY, str(HERE / "pyorigin.py"), str(path.parent), str(port), address]
        )
        try:
            _wait_port(address, port, origin)
            url = f"http://{address}:{port}/{path.name}"
            cache, out = suite.work / "c14", suite.work / "aria14"
            ours, peer, logs = [], [], []
            for _ in range(suite.rounds):
                shutil.rmtree(cache, ignore_errors=True)
                drop_page_cache_hint()
                start = time.perf_counter()
                logs.append(
                    run_stderr(
                        [PY, "-m", "model_provisioner", "--cache-dir", str(cache), "-v", "ensure", url],
                        {"MODEL_PROVISIONER_SETTINGS": str(settings)},
                    )
                )
                ours.append(time.perf_counter() - start)
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                drop_page_cache_hint()
                start = time.perf_counter()
                run(["aria2c", "-q", "-x16", "-s16", "-k1M", "-d", str(out), "-o", "f", url])
                peer.append(time.perf_counter() - start)
            shutil.rmtree(out, ignore_errors=True)
        finally:
            origin.terminate()
            origin.wait(10)
    chosen = chosen_connections(logs[-1])
    suite.choices[f"14 tbf {rate} link"] = (chosen, size / statistics.median(ours) / 1e6)
    suite.add(
        Result(
            f"14_tbf_{rate}_link_vs_aria2c_x16",
            ours,
            peer,
            "aria2c -x16 -s16",
            ">= 0.95",
            statistics.median(peer) / statistics.median(ours),
            extra={"connections": str(chosen)},
        )
    )
