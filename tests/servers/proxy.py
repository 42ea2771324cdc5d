"""A real forward proxy on 127.0.0.1: Debian's squid, no cache, one access-log line per request.

``requests()`` parses the access log (method, URL, status): a proxied ``http://`` request is logged with its
whole URL, an ``https://`` one as ``CONNECT host:port``. With ``users={name: password}`` it requires Basic
proxy credentials (squid's ``basic_ncsa_auth`` helper). Squid drops root to the ``proxy`` user, so its
files live in a directory of their own that this user can write to.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .nginx import free_port

NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"


@dataclass(frozen=True)
class ProxiedRequest:
    method: str
    url: str
    status: int


class Squid:
    def __init__(self, *, users: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mprov-squid-"))
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.dir / "access.log"
        lines = [
            f"http_port 127.0.0.1:{self.port}",
            "cache deny all",
            f"access_log stdio:{self.log}",
            f"cache_log {self.dir}/cache.log",
            f"pid_filename {self.dir}/squid.pid",
            f"coredump_dir {self.dir}",
            "cache_store_log none",
            "logfile_rotate 0",
            "shutdown_lifetime 0 seconds",
            "dns_timeout 5 seconds",
        ]
        if users:
            passwords = self.dir / "passwords"
            entries = []
            for name, password in users.items():
                hashed = subprocess.run(
                    ["openssl", "passwd", "-apr1", password], capture_output=True, text=True, check=True
                ).stdout.strip()
                entries.append(f"{name}:{hashed}\n")
            passwords.write_text("".join(entries))
            os.chmod(passwords, 0o644)
            lines += [
                f"auth_param basic program {NCSA_AUTH} {passwords}",
                "auth_param basic children 2",
                "acl authenticated proxy_auth REQUIRED",
                "http_access allow authenticated",
                "http_access deny all",
            ]
        else:
            lines.append("http_access allow all")
        conf = self.dir / "squid.conf"
        conf.write_text("\n".join(lines) + "\n")
        os.chmod(conf, 0o644)
        self.proc = subprocess.Popen(
            ["squid", "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"squid did not start: {self.cache_log()}") from None
                time.sleep(0.05)

    def cache_log(self) -> str:
        path = self.dir / "cache.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def requests(self) -> list[ProxiedRequest]:
        """Every request the proxy handled so far (the readiness probe excluded)."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) < 7 or "/" not in fields[3]:
                continue
            method, url = fields[5], fields[6]
            if method == "NONE" or method == "-":
                continue  # a connection that sent no request (our readiness probe)
            out.append(ProxiedRequest(method, url, int(fields[3].rsplit("/", 1)[1])))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
