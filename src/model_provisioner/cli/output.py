"""How the command line speaks: results on stdout (one JSON object with ``--json``), human messages on
stderr, sizes and ages as people read them, a progress bar only on an interactive terminal."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from model_provisioner.core.units import human_size

PROG = "model-provisioner"


def emit(args: argparse.Namespace, payload: Any, human: str | None = None) -> None:
    if args.json:
        sys.stdout.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    elif human is not None:
        sys.stdout.write(human + "\n")


def write_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the first is the header) in aligned columns on stdout; the last column is never padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    sys.stdout.write(
        "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows) + "\n"
    )


def ago(ms: float) -> str:
    seconds = max(0.0, ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


@contextlib.contextmanager
def progress_bar(
    args: argparse.Namespace, interval_s: float = 10.0
) -> Iterator[Callable[[int, int | None], None] | None]:
    """Download progress on stderr, never with --json/-q: a bar on an interactive terminal (size, percent,
    speed, time left, in binary units like every size printed), else a plain line every ``interval_s``
    seconds (CI systems stop jobs that stay silent)."""
    if args.json or args.quiet:
        yield None
        return
    if not sys.stderr.isatty():
        yield PlainProgress(args.ref, interval_s) if interval_s > 0 else None
        return
    from rich.console import Console  # noqa: PLC0415  # heavy: rich, only for an interactive terminal
    from rich.progress import (  # noqa: PLC0415  # heavy: rich, only for an interactive terminal
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(args.ref if len(args.ref) < 48 else "…" + args.ref[-47:], total=None, speed="")

        def update(done: int, total: int | None) -> None:
            speed = bar.tasks[task].speed
            bar.update(task, completed=done, total=total, speed=f"{human_size(int(speed))}/s" if speed else "")

        yield update


class PlainProgress:
    """One line per ``interval_s`` while bytes arrive: done, of the total and percent when known, speed."""

    def __init__(self, ref: str, interval_s: float) -> None:
        self.ref = ref if len(ref) < 120 else "…" + ref[-119:]
        self.interval_s = interval_s
        self.started = self.last = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last < self.interval_s:
                return
            self.last = now
        speed = done / max(now - self.started, 1e-9)
        of = f" of {human_size(total)} ({done * 100 // total}%)" if total else ""
        sys.stderr.write(f"{PROG}: {self.ref}: {human_size(done)}{of}, {human_size(int(speed))}/s\n")
        sys.stderr.flush()
