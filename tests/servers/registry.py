"""Debian's ``docker-registry`` (the CNCF distribution registry) on 127.0.0.1 with filesystem storage.

One instance per call; ``users={"name": "password"}`` turns on htpasswd Basic auth. ``token_auth=True`` turns
on Bearer token auth with a token server (``tests/servers/token_server.py``) on *another* host/port, as
Docker Hub and GHCR do. Started by the tests, stopped when they end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from .nginx import free_port, stop_process


class Registry:
    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        token: object | None = None,
        proxy_of: str | None = None,
    ) -> None:
        """``proxy_of``: a pull-through cache of that registry URL (distribution's ``proxy: remoteurl:``)."""
        exe = shutil.which("docker-registry")
        if exe is None:
            raise RuntimeError("docker-registry is not installed (scripts/test.sh installs it with apt-get)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        auth = ""
        if users:
            import bcrypt

            lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in users.items()]
            (workdir / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: mprov-test\n    path: {workdir / 'htpasswd'}\n"
        elif token is not None:
            auth = token.registry_auth_yaml()  # type: ignore[attr-defined]
        if proxy_of:
            auth += f"proxy:\n  remoteurl: {proxy_of}\n"
        config = f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {workdir / "data"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
{auth}"""
        (workdir / "config.yml").write_text(config)
        self.log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([exe, "serve", str(workdir / "config.yml")], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{self.url}/v2/", timeout=0.5).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(workdir / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps a blob on disk (to corrupt it in a test)."""
        hex_ = digest.split(":", 1)[1]
        return self.workdir / "data" / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def blob_gets(self, digest: str) -> int:
        """How many times the registry served that blob's bytes (GET with 200/206, from its access log)."""
        self.log.flush()
        needle = '"GET /v2/'
        count = 0
        for line in (self.workdir / "registry.log").read_text(errors="replace").splitlines():
            if needle in line and re.search(rf"/blobs/{digest}[ ?]", line) and re.search(r'" (200|206) ', line):
                count += 1
        return count

    def blob_transfers(self, digest: str) -> list[int]:
        """The body bytes of each GET of that blob (200/206), from the access log: a transfer cut short by the
        client shows as fewer bytes than the blob has."""
        self.log.flush()
        sizes = []
        for line in (self.workdir / "registry.log").read_text(errors="replace").splitlines():
            if '"GET /v2/' in line and re.search(rf"/blobs/{digest}[ ?]", line):
                found = re.search(r'" (200|206) (\d+) ', line)
                if found:
                    sizes.append(int(found.group(2)))
        return sizes

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()
