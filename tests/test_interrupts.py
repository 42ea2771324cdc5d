"""Ctrl-C, SIGTERM and kill -9 during a download: the partial download is kept, the entry shows as
Interrupted, the same command resumes it, and gc cleans what an interrupted ensure left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import run_cli
from .helpers import MiB, digest_of, partial_bytes_held, wait_for


@pytest.mark.slow  # over 1.5 s (docs/development.md: the fast tier)
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_an_interrupted_download_is_kept_shown_and_resumed(
    fileserver: Any, cache_dir: Path, settings_file: Any, signame: str, mode: str
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from .servers.fileserver import Fault

    data = os.urandom(24 * MiB)
    url = fileserver.put("big.bin", data)
    transfer = {
        "parallel_threshold_bytes": 8 * MiB,
        "parallel_chunk_min_bytes": 2 * MiB,
        "single_stream_enough_bytes_per_s": 1e15,
        "connections": 4,
        "stall_timeout_s": 30,
    }
    if mode == "stream":
        transfer["connections"] = 1
    # every range after the first stalls half-way: the download is interrupted while parallel ranges run
    fileserver.faults["/big.bin"] = Fault(stall_after=MiB, stall_s=20, times=4, clean_first=1)
    env = {**os.environ, "MODEL_PROVISIONER_SETTINGS": str(settings_file(transfer=transfer))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model_provisioner",
            "--cache-dir",
            str(cache_dir),
            "ensure",
            url,
            "--digest",
            digest_of(data),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: fileserver.served("big.bin") >= 3 * MiB, 20, "3 MiB served")
    # more than the first range is on disk: the rerun must resume past it
    wait_for(lambda: partial_bytes_held(cache_dir) > 2 * MiB, 20, "more than 2 MiB on disk")
    proc.send_signal(getattr(signal, signame))
    started = time.monotonic()
    code = proc.wait(timeout=15)
    said = proc.stderr.read() if proc.stderr else ""
    assert code == (143 if signame == "SIGTERM" else 130) and time.monotonic() - started < 5, said
    assert "is kept: the same command resumes it" in said  # and the rerun below does
    assert any((cache_dir / "partial").glob("*.part"))
    listed = run_cli("ls", "--json", cache_dir=cache_dir).json()["models"]
    assert [m["lifecycle"] for m in listed] == ["Interrupted"]
    served_before = fileserver.served("big.bin")
    fileserver.faults.clear()
    rerun = run_cli(
        "ensure",
        url,
        "--digest",
        digest_of(data),
        "--json",
        cache_dir=cache_dir,
        env={"MODEL_PROVISIONER_SETTINGS": env["MODEL_PROVISIONER_SETTINGS"]},
    )
    assert rerun.code == 0, rerun.stderr
    assert rerun.json()["bytes_fetched"] < len(data) - 2 * MiB  # resumed, not fetched again
    assert fileserver.served("big.bin") - served_before < len(data) - 2 * MiB
    assert run_cli("ls", "--json", cache_dir=cache_dir).json()["models"][0]["lifecycle"] == "Active"


def test_gc_cleans_an_interrupted_entry(cache_dir: Path, fileserver: Any, settings_file: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    from .servers.fileserver import Fault

    url = fileserver.put("gc.bin", os.urandom(4 * MiB))
    fileserver.faults["/gc.bin"] = Fault(stall_after=MiB, stall_s=20, times=1)
    env = {**os.environ, "MODEL_PROVISIONER_SETTINGS": str(settings_file())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_provisioner", "--cache-dir", str(cache_dir), "ensure", url],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    # the stalled download has begun writing its partial file
    partials = cache_dir / "partial"
    wait_for(lambda: fileserver.served("gc.bin") >= MiB and any(partials.glob("*.part")), 30, "a partial file")
    proc.send_signal(signal.SIGKILL)  # no chance to mark it: a stale Pending row
    proc.wait(timeout=10)
    assert [m["lifecycle"] for m in run_cli("ls", "--json", cache_dir=cache_dir).json()["models"]] == ["Interrupted"]
    # every front end derives it the same way (issue 27 item 1): before, inspect said Pending
    assert run_cli("inspect", url, "--json", cache_dir=cache_dir).json()["lifecycle"] == "Interrupted"
    gc = run_cli("gc", "--json", cache_dir=cache_dir)
    assert gc.code == 0, gc.stderr
    assert run_cli("ls", "--json", cache_dir=cache_dir).json()["models"] == []
    assert any((cache_dir / "partial").glob("*.part"))  # young partials are kept for a resume
