"""How the command line speaks: results on stdout (one JSON object with ``--json``), human messages on
stderr, sizes and ages as people read them, a progress bar only on an interactive terminal."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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
def progress_bar(args: argparse.Namespace) -> Iterator[Callable[[int, int | None], None] | None]:
    """A rich progress bar on stderr, only for an interactive terminal and never with --json/-q."""
    if args.json or args.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console  # noqa: PLC0415  # heavy: rich, only for an interactive terminal
    from rich.progress import (  # noqa: PLC0415  # heavy: rich, only for an interactive terminal
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(args.ref if len(args.ref) < 48 else "…" + args.ref[-47:], total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update
