"""What the command-line process does before anything imports httpx: keep two third-party import side effects
out of every command (docs/benchmarks.md, "Start-up").

- ``import httpx`` imports httpx's own command-line client (``httpx._main``: click, rich, pygments) whenever
  those are installed: 38 ms here.
- ``import httpcore`` imports trio, when it is installed, to offer trio as an async backend: 48 ms here.

This process uses neither: it never runs httpx's CLI nor an async backend of httpcore (``serve`` runs on
asyncio through uvicorn and anyio). Only the program does this, never the library: an application that
imports ``model_provisioner`` keeps its modules as they are.
"""

from __future__ import annotations

import sys
import types


def _no_httpx_cli(*args: object, **kwargs: object) -> None:
    raise SystemExit("httpx's command-line client is not loaded in the model-provisioner process")


def trim_unused_imports() -> None:
    if "httpx" in sys.modules or "httpcore" in sys.modules:
        return  # already imported: nothing to save, and nothing to change
    stub = types.ModuleType("httpx._main", "httpx's command-line client (not loaded: cli/startup.py)")
    stub.main = _no_httpx_cli  # type: ignore[attr-defined]
    sys.modules.setdefault("httpx._main", stub)
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]  # ``import trio`` raises ImportError
