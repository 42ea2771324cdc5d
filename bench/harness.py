"""Shared benchmark harness: alternate ours and a peer (A B A B ...), report median and min-max, and print
one line per scenario: ``name: ours X, peer Y, ratio R (goal G)``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
#: the Python that runs our CLI and the in-process peers
PY = sys.executable


@dataclass
class Result:
    name: str
    ours: list[float]
    peer: list[float]
    peer_name: str
    goal: str
    #: ratio = peer median / ours median (how many times faster we are); for "lower is better" metrics
    ratio: float = 0.0
    unit: str = "s"
    extra: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.name}: ours {fmt(self.ours, self.unit)}, {self.peer_name} {fmt(self.peer, self.unit)}, "
            f"ratio {self.ratio:.2f} (goal {self.goal})" + "".join(f", {k} {v}" for k, v in self.extra.items())
        )


def fmt(xs: list[float], unit: str = "s") -> str:
    if not xs:
        return "n/a"
    scale = 1000.0 if unit == "ms" else 1.0
    return f"{statistics.median(xs) * scale:.3f}{unit} [{min(xs) * scale:.3f}-{max(xs) * scale:.3f}]"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(
    ours: Callable[[], object], peer: Callable[[], object], rounds: int, before: Callable[[], object] | None = None
) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        if before:
            before()
        a.append(timed(ours))
        if before:
            before()
        b.append(timed(peer))
    return a, b


def speed_ratio(name: str, ours: list[float], peer: list[float], peer_name: str, goal: str) -> Result:
    return Result(name, ours, peer, peer_name, goal, statistics.median(peer) / statistics.median(ours))


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    if done.returncode != 0:  # say why: the command's own last words, not only its exit status
        said = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:8])} exited {done.returncode}: {said}")


def run_stderr(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """``run``, returning what the command wrote to stderr (our -v log)."""
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    said = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} exited {done.returncode}: {said[-2000:]}")
    return said


def chosen_connections(log: str) -> int:
    """The connection count the fan-out controller settled on, from our -v log (1 when it never fanned out)."""
    found = re.findall(r"ranges on (\d+) connection", log)
    return int(found[-1]) if found else 1


def fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def random_file(path: Path, size: int) -> Path:
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 16 << 20)
            fh.write(os.urandom(n))
            left -= n
    return path


def drop_page_cache_hint() -> None:
    """Write back dirty pages so one run's writeback does not land in the next run's timing."""
    os.sync()


def sha_stream(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def link_lfs(www: Path, path: Path) -> str:
    digest = sha_stream(path)
    target = www / "lfs" / digest
    if not target.exists():
        os.link(path, target)
    return digest


def largest_file_held(root: Path) -> int:
    """The most bytes any file under ``root`` holds (allocated blocks, capped at its size)."""
    best = 0
    if root.exists():
        for dirpath, _, names in os.walk(root):
            for name in names:
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(dirpath, name))
                    best = max(best, min(st.st_size, st.st_blocks * 512))
    return best


def rate_of(cmd: list[str], env: dict[str, str]) -> float:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **env})
    return float(out.stdout.strip().splitlines()[-1])


def ratio(name: str, ours: list[float], peer: list[float], peer_name: str, goal: str, unit: str = "s") -> Result:
    result = Result(name, ours, peer, peer_name, goal, statistics.median(peer) / statistics.median(ours))
    result.unit = unit
    return result
