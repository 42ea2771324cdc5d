"""Starting an engine process and waiting until it is ready.

The engine runs with its output in its log file, and dies with its supervisor (``PR_SET_PDEATHSIG``): a
supervisor killed with SIGKILL never leaves an engine nobody owns. It gets an allow-listed environment
(``ENGINE_ENV_ALLOWED``) plus its own variables, never the whole environment of ``up`` or ``serve`` (API
tokens, cloud keys). Readiness is polled over HTTP on loopback: connection refused or a 503 means still
loading, 200 means ready; an engine that exits while starting is an error carrying the last lines of its log
(exit 9), one that never becomes ready is stopped and reported (exit 8). Log files are opened like every
other cache file (``O_NOFOLLOW``, checked after open: docs/reliability.md).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from model_provisioner.core.errors import EngineFailed, EngineNotReady, MissingTool, UnsafeCachePath
from model_provisioner.core.redact import register_secret
from model_provisioner.storage.safefs import open_in_cache

PR_SET_PDEATHSIG = 1
#: what an engine inherits from the environment of the command that starts it (besides its own ``env``)
ENGINE_ENV_ALLOWED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "OMP_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
    }
)
ENGINE_ENV_PREFIXES = ("LC_", "GGML_")
#: names whose values are secrets (redacted wherever we write)
_SECRET_NAME = re.compile(r"(?i)token|key|secret|passw|credential|auth")


def engine_environment(own: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``base`` (the current environment), then the engine's own variables."""
    source = os.environ if base is None else base
    out = {k: v for k, v in source.items() if k in ENGINE_ENV_ALLOWED or k.startswith(ENGINE_ENV_PREFIXES)}
    out.update(own)
    return out


def register_env_secrets(env: Mapping[str, str]) -> None:
    """The values of secret-named variables (HF_TOKEN, LLAMA_API_KEY, AWS_SECRET_ACCESS_KEY…) are secrets."""
    for name, value in env.items():
        if _SECRET_NAME.search(name):
            register_secret(value)


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


def open_log(path: Path, *, truncate: bool = False) -> int:
    """A log file in the cache opened for appending (or emptied): never through a planted symlink or hard
    link, never a FIFO (``open_in_cache``); the truncation happens only after those checks."""
    fd = open_in_cache(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if truncate:
        os.ftruncate(fd, 0)
    return fd


def read_log_tail(path: Path, limit: int) -> bytes:
    """The last ``limit`` bytes of a log in the cache, read without following a planted link."""
    try:
        fd = open_in_cache(path, os.O_RDONLY)
    except (OSError, UnsafeCachePath):
        return b""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, max(0, size - limit))
    finally:
        os.close(fd)


def spawn(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str], pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """Start the engine with exactly ``env`` (build it with ``engine_environment``)."""
    log = open_log(log_path)
    try:
        os.write(log, f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(argv)}\n".encode())
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            preexec_fn=_die_with_parent,
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
    finally:
        os.close(log)


def log_tail(log_path: Path, lines: int = 6) -> str:
    text = read_log_tail(log_path, 8192).decode("utf-8", "replace")
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


class StopRequested(Exception):
    """The supervisor was told to stop while the engine was starting."""


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout_s: float,
    log_path: Path,
    subject: str,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Poll ``ready`` until it says so; the engine exiting first is exit 9, the timeout exit 8 (the engine is
    then stopped: nothing is left running); ``stopping()`` turning true ends the wait (``StopRequested``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise EngineFailed(
                f"{subject} exited with code {code} while starting; last log lines: {log_tail(log_path)}"
            )
        if stopping():
            raise StopRequested(subject)
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
