"""Scenarios 5-7, 9 and 10 of the suite: what a cached model costs (warm in-process and CLI ensures vs
huggingface_hub's cache lookups), eight processes asking at once, re-verification vs one-core hashlib, and
memory while downloading."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from harness import (
    PY,
    MiB,
    Result,
    alternate,
    random_file,
    rate_of,
    ratio,
    run,
    timed,
)

if TYPE_CHECKING:
    from suite import Suite


def s5_warm_in_process(suite: Suite) -> None:
    cache, hf_cache = suite.work / "c5", suite.work / "hf5"
    ref = f"hf:bench/single@{suite.single_repo()}/model.bin"
    suite.ours(cache, "ensure", ref)
    suite.hf(
        f"from huggingface_hub import hf_hub_download as d; d('bench/single', 'model.bin', "
        f"revision={suite.single_repo()!r}, cache_dir={str(hf_cache)!r})"
    )
    n = 2000 if suite.quick else 20000
    ours = rate_of(
        [
            PY,
            "-c",
            f"import time, logging; from model_provisioner import ModelProvisioner, Settings\n"
            f"p = ModelProvisioner(Settings.from_env(cache_dir={str(cache)!r}))\np.ensure_present({ref!r})\n"
            f"t = time.perf_counter()\nfor _ in range({n}): p.ensure_present({ref!r})\n"
            f"print({n} / (time.perf_counter() - t))",
        ],
        suite.env(),
    )
    peer = rate_of(
        [
            suite.hf_python,
            "-c",
            "import time; from huggingface_hub import hf_hub_download as d\n"
            f"t = time.perf_counter()\nfor _ in range({n // 10}): d('bench/single', 'model.bin', "
            f"revision={suite.single_repo()!r}, cache_dir={str(hf_cache)!r})\n"
            f"print({n // 10} / (time.perf_counter() - t))",
        ],
        suite.env(),
    )
    suite.add(
        Result(
            "5_warm_in_process_calls_per_s",
            [1 / ours],
            [1 / peer],
            "hf_hub_download(revision=commit)",
            ">= 3 and >= 5,000/s",
            ours / peer,
            extra={"ours/s": f"{ours:,.0f}", "peer/s": f"{peer:,.0f}"},
        )
    )


def s6_warm_cli(suite: Suite) -> None:
    cache, hf_cache = suite.work / "c5", suite.work / "hf5"
    hf_cli = shutil.which("hf", path=str(Path(suite.hf_python).parent)) or "hf"
    ref = f"hf:bench/single@{suite.single_repo()}/model.bin"
    a, b = alternate(
        lambda: suite.ours(cache, "ensure", ref),
        lambda: run(
            [
                hf_cli,
                "download",
                "bench/single",
                "model.bin",
                "--revision",
                suite.single_repo(),
                "--cache-dir",
                str(hf_cache),
            ],
            suite.env(),
        ),
        max(suite.rounds, 5),
    )
    suite.add(ratio("6_warm_cli_ensure_vs_hf_download", a, b, "hf download (warm)", "faster and <= 250 ms", unit="ms"))


def s7_concurrent(suite: Suite) -> None:
    size = (16 if suite.quick else 512) * MiB
    suite.lfs_file("c8.bin", size)
    url = f"{suite.nginx.url}/data/c8.bin"

    def eight() -> None:
        cache = suite.work / "c7"
        shutil.rmtree(cache, ignore_errors=True)
        procs = [
            subprocess.Popen(
                [PY, "-m", "model_provisioner", "--cache-dir", str(cache), "-q", "ensure", url],
                stdout=subprocess.DEVNULL,
                env={**os.environ, **suite.env()},
            )
            for _ in range(8)
        ]
        assert all(p.wait(timeout=600) == 0 for p in procs)

    def one() -> None:
        cache = suite.work / "c7b"
        shutil.rmtree(cache, ignore_errors=True)
        suite.ours(cache, "ensure", url)

    before = suite.nginx.bytes_served().get("/data/c8.bin", 0)
    eight_time = timed(eight)
    served = suite.nginx.bytes_served().get("/data/c8.bin", 0) - before
    one_time = timed(one)
    suite.add(
        Result(
            "7_eight_processes_one_ref",
            [eight_time],
            [one_time],
            "one process",
            "bytes/size <= 1.05",
            served / size,
            extra={"bytes_served/size": f"{served / size:.3f}", "wall 8 vs 1": f"{eight_time / one_time:.2f}x"},
        )
    )


def s9_verify(suite: Suite) -> None:
    size = (8 if suite.quick else 512) * MiB
    files = [random_file(suite.www / "data" / f"v{i}.bin", size) for i in range(4)]
    cache = suite.work / "c9"
    if not (cache / "catalog.db").exists():
        from model_provisioner import ModelProvisioner, Settings

        with ModelProvisioner(Settings.from_env(cache_dir=cache)) as prov:
            for i, f in enumerate(files):
                prov.register_model(f"https://bench.example/v{i}.bin", f)

    def hashlib_one_core() -> None:
        for f in files:
            with open(f, "rb") as fh:
                hashlib.file_digest(fh, "sha256")

    a, b = alternate(lambda: suite.ours(cache, "verify", "--all"), hashlib_one_core, suite.rounds)
    suite.add(ratio("9_verify_4_files_vs_hashlib_one_core", a, b, "hashlib (1 core)", ">= 1.6"))


def s10_rss(suite: Suite) -> None:
    sizes = [4, 16, 64] if suite.quick else [256, 1024, 4096]
    rss: dict[int, float] = {}
    for mib in sizes:
        _, _ = suite.lfs_file(f"rss{mib}.bin", mib * MiB)
        cache = suite.work / "c10"
        shutil.rmtree(cache, ignore_errors=True)
        # a small launcher forks the CLI: a child's ru_maxrss includes the image it was forked from
        launcher = (
            "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "_, status, usage = os.wait4(p.pid, 0); assert os.waitstatus_to_exitcode(status) == 0; "
            "print(usage.ru_maxrss)"
        )
        out = subprocess.run(
            [
                PY,
                "-c",
                launcher,
                PY,
                "-m",
                "model_provisioner",
                "--cache-dir",
                str(cache),
                "-q",
                "ensure",
                f"{suite.nginx.url}/data/rss{mib}.bin",
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **suite.env()},
        )
        rss[mib] = int(out.stdout.split()[-1]) / 1024  # KiB -> MiB
    peak = max(rss.values())
    suite.add(
        Result(
            "10_peak_rss_during_download",
            [peak],
            [200.0],
            "goal",
            "< 200 MiB, flat in file size",
            200.0 / peak,
            unit="MiB",
            extra={f"{k} MiB file": f"{v:.0f} MiB RSS" for k, v in rss.items()},
        )
    )
