"""moto's S3 API server (``moto_server``) on 127.0.0.1; boto3 reaches it through ``endpoint_url``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .nginx import free_port, stop_process

ACCESS_KEY = "AKIAMOTOTESTKEY00001"
SECRET_KEY = "moto-secret-do-not-leak-0123456789"


class S3Server:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server")
        cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
        self.log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=0.5)
                break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {(workdir / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def env(self) -> dict[str, str]:
        """What a user sets for boto3's standard credential chain and an S3-compatible endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.url,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset")

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()
