"""Starting an engine process and waiting until it is ready.

The engine runs in its own session with its output in its log file, and dies with its supervisor
(``PR_SET_PDEATHSIG``): a supervisor killed with SIGKILL never leaves an engine nobody owns. Readiness is
polled over HTTP on loopback: connection refused or a 503 means still loading, 200 means ready; an engine
that exits while starting is an error carrying the last lines of its log (exit 9), one that never becomes
ready is stopped and reported (exit 8).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from model_provisioner.core.errors import EngineFailed, EngineNotReady, MissingTool

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent (the supervisor) dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def check_binary(binary: str, what: str, how_to_get: str) -> str:
    path = binary if "/" in binary else shutil.which(binary)
    if path is None or not os.path.isfile(path):
        raise MissingTool(f"{what} {binary!r} not found; {how_to_get}")
    if not os.access(path, os.X_OK):
        raise MissingTool(f"{what} {path} is not executable (chmod +x it); {how_to_get}")
    return os.path.abspath(path)


def spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent,
            close_fds=True,
        )


def log_tail(log_path: Path, lines: int = 6) -> str:
    try:
        text = log_path.read_bytes()[-8192:].decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def http_status(host: str, port: int, path: str, timeout: float = 2.0) -> int | None:
    """The status of ``GET path`` on loopback, or None when nothing answers (refused, reset, timeout). A bare
    socket: a readiness probe needs the status line only (and http.client costs ~12 ms of start-up)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                piece = conn.recv(1024)
                if not piece:
                    break
                head += piece
    except OSError:
        return None
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout_s: float,
    log_path: Path,
    subject: str,
) -> None:
    """Poll ``ready`` until it says so; the engine exiting first is exit 9, the timeout exit 8 (the engine is
    then stopped: nothing is left running)."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise EngineFailed(
                f"{subject} exited with code {code} while starting; last log lines: {log_tail(log_path)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            terminate(proc)
            raise EngineNotReady(
                f"{subject} did not become ready within {timeout_s:.0f}s (raise ready_timeout_s if it is only slow); "
                f"it was stopped; last log lines: {log_tail(log_path)}"
            )
        time.sleep(0.005)  # a refused connection on loopback costs microseconds: ready means ready now


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> int | None:
    """SIGTERM, up to ``grace_s``, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode
