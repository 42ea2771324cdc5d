"""Processes and ports on this machine: a pid is only trusted together with its kernel start time (a
reused pid is another process), and a port is free when nothing accepts on it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields and fields[0] == "Z":
        return None  # a zombie has exited: only its parent has not reaped it yet
    return fields[19]


def is_alive(pid: int | None, started: str | None) -> bool:
    """``pid`` runs and is the very process recorded (same start time)."""
    return pid is not None and started is not None and start_time(pid) == started


def stop(pid: int, started: str | None, grace_s: float = 5.0) -> bool:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; only the recorded process. True when it is gone."""
    if not is_alive(pid, started):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_alive(pid, started):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and is_alive(pid, started):
        time.sleep(0.02)
    return not is_alive(pid, started)


def port_in_use(host: str, port: int) -> bool:
    """Something accepts connections on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def free_port(host: str) -> int:
    """A port nothing listens on now (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def process_uid(pid: int) -> int | None:
    """The real uid of ``pid`` (``Uid:`` of /proc/PID/status), or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def environ_has(pid: int, entry: str, limit: int = 1 << 20) -> bool:
    """``NAME=value`` is in the environment ``pid`` was started with (/proc/PID/environ: readable only by the
    process's own user and root)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read(limit)
    except OSError:
        return False
    return entry.encode() in data.split(b"\0")


def holds_open(pid: int, device: int, inode: int) -> bool:
    """``pid`` has the file (device, inode) open (one of /proc/PID/fd/*, readable by its own user and root)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            st = os.stat(f"{fd_dir}/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (device, inode):
            return True
    return False
