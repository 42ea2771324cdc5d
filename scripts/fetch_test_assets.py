#!/usr/bin/env python3
"""Fetch what the tests need from PyPI once, into ~/.cache/model-provisioner-tests (kept between runs):
the llama-cpp-python sdist, whose vendored llama.cpp tree carries the real vocab-only GGUF files the GGUF
reader is tested against (and the llama.cpp sources). Verified by its sha256; a cached copy is reused."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

from model_provisioner.engines.package_index import LLAMACPP_SDIST  # the pin `engines install` uses, written once

SDIST = LLAMACPP_SDIST.filename
SDIST_SHA256 = LLAMACPP_SDIST.sha256
CACHE = Path(os.environ.get("MODEL_PROVISIONER_TEST_ASSETS", Path.home() / ".cache" / "model-provisioner-tests"))


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def main() -> int:
    target = CACHE / SDIST
    if target.is_file() and sha256(target) == SDIST_SHA256:
        return 0
    CACHE.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(
        "https://pypi.org/simple/llama-cpp-python/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        files = json.load(answer)["files"]
    url = next(f["url"] for f in files if f["filename"] == SDIST)
    partial = target.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=300) as answer, open(partial, "wb") as out:
        while chunk := answer.read(1 << 20):
            out.write(chunk)
    if sha256(partial) != SDIST_SHA256:
        partial.unlink()
        sys.stderr.write(f"fetch_test_assets: {SDIST} from PyPI does not have sha256 {SDIST_SHA256}\n")
        return 1
    os.replace(partial, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
