"""nginx (Debian) as a static file / CDN server on 127.0.0.1, with an access log that counts body bytes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 10 s: every test server ends with its tests."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Nginx:
    def __init__(self, root: Path, workdir: Path, *, limit_rate: str | None = None) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise RuntimeError("nginx is not installed (scripts/test.sh installs it with apt-get)")
        self.root = root
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = workdir / "access.log"
        limit = f"limit_rate {limit_rate};" if limit_rate else ""
        tmp = workdir / "tmp"
        conf = f"""
worker_processes 2;
user root;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format counted '$uri $status $body_bytes_sent "$http_range"';
    access_log {self.access_log} counted;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    types {{ application/octet-stream gguf bin safetensors; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        location / {{ {limit} }}
    }}
}}
"""
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(conf)
        self.proc = subprocess.Popen(
            [exe, "-e", str(workdir / "error.log"), "-c", str(self.conf), "-p", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"nginx did not start: {err}") from None
                time.sleep(0.05)

    def bytes_served(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                parts = line.split(" ")
                if len(parts) >= 3 and parts[2].isdigit():
                    out[parts[0]] += int(parts[2])
        return out

    def close(self) -> None:
        stop_process(self.proc)


def capped_nginx_with_file(tmp_path: Path, name: str, size: int, limit_rate: str) -> tuple[Nginx, bytes]:
    """An nginx capping every connection at ``limit_rate``, serving ``size`` random bytes at ``/m.bin``."""
    root = tmp_path / name
    root.mkdir()
    data = os.urandom(size)
    (root / "m.bin").write_bytes(data)
    return Nginx(root, tmp_path / f"{name}-work", limit_rate=limit_rate), data
