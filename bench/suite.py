#!/usr/bin/env python3
"""The benchmark suite behind `bench/run`: every scenario against the tool a user would pick instead, in one
run, alternating ours and the peer (A B A B ...), median and min-max, ratio per pair; writes
docs/benchmarks.md and docs/benchmarks-connections.png. Numbers are whatever this run measured.

    bench/run [--quick] [--rounds N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    Result,
    alternate,
    chosen_connections,
    drop_page_cache_hint,
    fmt,
    random_file,
    run,
    run_stderr,
    timed,
)
from scenarios_origin import s13_cpu_bound_origin, s14_shaped_link  # noqa: E402

MiB = 1 << 20
PY = sys.executable
NOTES_MARKER = "<!-- notes: kept by bench/run -->"


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        from tests.servers.hub import FakeHub
        from tests.servers.nginx import Nginx

        self.args = args
        self.quick = args.quick
        self.rounds = args.rounds or (2 if self.quick else 3)
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="mprov-suite-"))
        self.www = self.work / "www"
        (self.www / "lfs").mkdir(parents=True, exist_ok=True)
        self.hf_python = args.hf_python or PY
        self.results: list[Result] = []
        #: scenario -> (connections the fan-out controller chose, MB/s): markers on the connections plot
        self.choices: dict[str, tuple[int, float]] = {}
        self.nginx = Nginx(self.www, self.work / "nginx")
        self.limited = Nginx(self.www, self.work / "nginx-limited", limit_rate=self.rate_limit)
        self.hub = FakeHub(self.work / "hub")
        self.hub.cdn.url = self.nginx.url
        self.settings = self.work / "settings.json"
        self.settings.write_text(json.dumps({"transfer": {"connections": 8}}))

    # sizes: full vs quick
    @property
    def big(self) -> int:
        return (16 if self.quick else 1024) * MiB

    @property
    def rate_limit(self) -> str:
        return "20m" if self.quick else "50m"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "MODEL_PROVISIONER_SETTINGS": str(self.settings),
            "HF_ENDPOINT": self.hub.url,
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            **extra,
        }

    def close(self) -> None:
        self.hub.close()
        self.nginx.close()
        self.limited.close()

    def add(self, result: Result) -> None:
        self.results.append(result)
        print(result.line(), flush=True)

    # -------------------------------------------------------------------------------------- data
    def lfs_file(self, name: str, size: int) -> tuple[Path, str]:
        path = random_file(self.www / "data" / name, size)
        digest = _sha_stream(path)  # streaming: this process stays small (its forks inherit its RSS)
        target = self.www / "lfs" / digest
        if not target.exists():
            os.link(path, target)
        return path, digest

    def hub_repo(self, repo_id: str, files: dict[str, tuple[Path, str]], small: dict[str, bytes] | None = None) -> str:
        commit = self.hub.add_repo(repo_id, {**{k: b"placeholder" for k in files}, **(small or {})})
        entries = self.hub.repos[repo_id].commits[commit]
        for name, (path, digest) in files.items():
            entry = entries[name]
            entry.lfs_sha256, entry.size, entry.stored = digest, path.stat().st_size, self.www / "lfs" / digest
        return commit

    def ours(self, cache: Path, *argv: str, env: dict[str, str] | None = None) -> None:
        run([PY, "-m", "model_provisioner", "--cache-dir", str(cache), "-q", *argv], self.env(**(env or {})))

    def hf(self, code: str, env: dict[str, str] | None = None) -> None:
        run([self.hf_python, "-c", code], self.env(**(env or {})))

    # ---------------------------------------------------------------------------------- scenarios
    def s1_https_vs_curl(self) -> None:
        _, digest = self.lfs_file("https.bin", self.big)
        url, cache, out = f"{self.nginx.url}/data/https.bin", self.work / "c1", self.work / "curl.out"
        a, b = alternate(
            lambda: self.ours(cache, "ensure", url, "--digest", f"sha256:{digest}"),
            lambda: run(["curl", "-sS", "-o", str(out), url]),
            self.rounds,
            lambda: (shutil.rmtree(cache, ignore_errors=True), out.unlink(missing_ok=True), drop_page_cache_hint()),
        )
        self.add(_ratio("1_cold_https_vs_curl", a, b, "curl -o", ">= 0.9"))

    def s2_hf_single(self) -> None:
        path, digest = self.lfs_file("single.bin", self.big)
        self.single_commit = self.hub_repo("bench/single", {"model.bin": (path, digest)})
        cache, hf_cache = self.work / "c2", self.work / "hf2"
        a, b = alternate(
            lambda: self.ours(cache, "ensure", "hf:bench/single/model.bin"),
            lambda: self.hf(
                f"from huggingface_hub import hf_hub_download as d; d('bench/single', "
                f"'model.bin', cache_dir={str(hf_cache)!r})"
            ),
            self.rounds,
            lambda: (
                shutil.rmtree(cache, ignore_errors=True),
                shutil.rmtree(hf_cache, ignore_errors=True),
                drop_page_cache_hint(),
            ),
        )
        self.add(_ratio("2_cold_hf_file_vs_hf_hub_download", a, b, "hf_hub_download", ">= 1.5"))

    def s3_hf_repo(self) -> None:
        shard = (4 if self.quick else 256) * MiB
        files = {
            f"model-{i:05d}-of-00008.safetensors": self.safetensors(f"shard{i}.safetensors", shard) for i in range(1, 9)
        }
        index = {"metadata": {}, "weight_map": {f"w{i}": name for i, name in enumerate(files)}}
        small = {
            "config.json": b'{"model_type": "llama", "max_position_embeddings": 4096}',
            "tokenizer.json": b"{}",
            "tokenizer_config.json": b"{}",
            "generation_config.json": b"{}",
            "model.safetensors.index.json": json.dumps(index).encode(),
        }
        self.hub_repo("bench/repo", files, small)
        cache, hf_cache = self.work / "c3", self.work / "hf3"
        a, b = alternate(
            lambda: self.ours(cache, "ensure", "hf:bench/repo"),
            lambda: self.hf(
                f"from huggingface_hub import snapshot_download as s; s('bench/repo', cache_dir={str(hf_cache)!r})"
            ),
            self.rounds,
            lambda: (
                shutil.rmtree(cache, ignore_errors=True),
                shutil.rmtree(hf_cache, ignore_errors=True),
                drop_page_cache_hint(),
            ),
        )
        self.add(_ratio("3_cold_hf_repo_8_shards_vs_snapshot_download", a, b, "snapshot_download", ">= 1.5"))

    def safetensors(self, name: str, size: int) -> tuple[Path, str]:
        path = self.www / "data" / name
        if not path.exists() or path.stat().st_size < size:
            n = size - 256
            header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
            header += b" " * (-len(header) % 8)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(len(header).to_bytes(8, "little") + header)
                left = n
                while left:
                    chunk = os.urandom(min(left, 16 * MiB))
                    fh.write(chunk)
                    left -= len(chunk)
        return path, _link_lfs(self.www, path)

    def s4_rate_limited(self) -> None:
        self.lfs_file("https.bin", self.big)
        url, cache, out = f"{self.limited.url}/data/https.bin", self.work / "c4", self.work / "aria"

        def before() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        a, b = alternate(
            lambda: self.ours(cache, "ensure", url),
            lambda: run(["aria2c", "-q", "-x8", "-s8", "-k1M", "-d", str(out), "-o", "f", url]),
            self.rounds,
            before,
        )
        self.add(_ratio(f"4a_limit_rate_{self.rate_limit}_vs_aria2c_x8", a, b, "aria2c -x8 -s8", ">= 0.9"))
        hub_limited = self.work / "hf4"
        self.hub.cdn.url = self.limited.url
        try:
            rounds = self.rounds  # hf_hub_download takes ~21 s a round here: three, so one slow round is no median
            c, d = alternate(
                lambda: self.ours(cache, "ensure", "hf:bench/single/model.bin"),
                lambda: self.hf(
                    f"from huggingface_hub import hf_hub_download as d; d('bench/single', "
                    f"'model.bin', cache_dir={str(hub_limited)!r})"
                ),
                rounds,
                lambda: (shutil.rmtree(cache, ignore_errors=True), shutil.rmtree(hub_limited, ignore_errors=True)),
            )
        finally:
            self.hub.cdn.url = self.nginx.url
        self.add(_ratio(f"4b_limit_rate_{self.rate_limit}_vs_hf_hub_download", c, d, "hf_hub_download", ">= 6"))

    def s5_warm_in_process(self) -> None:
        cache, hf_cache = self.work / "c5", self.work / "hf5"
        ref = f"hf:bench/single@{self.single_commit}/model.bin"
        self.ours(cache, "ensure", ref)
        self.hf(
            f"from huggingface_hub import hf_hub_download as d; d('bench/single', 'model.bin', "
            f"revision={self.single_commit!r}, cache_dir={str(hf_cache)!r})"
        )
        n = 2000 if self.quick else 20000
        ours = _rate(
            [
                PY,
                "-c",
                f"import time, logging; from model_provisioner import ModelProvisioner, Settings\n"
                f"p = ModelProvisioner(Settings.from_env(cache_dir={str(cache)!r}))\np.ensure_present({ref!r})\n"
                f"t = time.perf_counter()\nfor _ in range({n}): p.ensure_present({ref!r})\n"
                f"print({n} / (time.perf_counter() - t))",
            ],
            self.env(),
        )
        peer = _rate(
            [
                self.hf_python,
                "-c",
                "import time; from huggingface_hub import hf_hub_download as d\n"
                f"t = time.perf_counter()\nfor _ in range({n // 10}): d('bench/single', 'model.bin', "
                f"revision={self.single_commit!r}, cache_dir={str(hf_cache)!r})\n"
                f"print({n // 10} / (time.perf_counter() - t))",
            ],
            self.env(),
        )
        self.add(
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

    def s6_warm_cli(self) -> None:
        cache, hf_cache = self.work / "c5", self.work / "hf5"
        hf_cli = shutil.which("hf", path=str(Path(self.hf_python).parent)) or "hf"
        ref = f"hf:bench/single@{self.single_commit}/model.bin"
        a, b = alternate(
            lambda: self.ours(cache, "ensure", ref),
            lambda: run(
                [
                    hf_cli,
                    "download",
                    "bench/single",
                    "model.bin",
                    "--revision",
                    self.single_commit,
                    "--cache-dir",
                    str(hf_cache),
                ],
                self.env(),
            ),
            max(self.rounds, 5),
        )
        self.add(
            _ratio("6_warm_cli_ensure_vs_hf_download", a, b, "hf download (warm)", "faster and <= 250 ms", unit="ms")
        )

    def s7_concurrent(self) -> None:
        size = (16 if self.quick else 512) * MiB
        self.lfs_file("c8.bin", size)
        url = f"{self.nginx.url}/data/c8.bin"

        def eight() -> None:
            cache = self.work / "c7"
            shutil.rmtree(cache, ignore_errors=True)
            procs = [
                subprocess.Popen(
                    [PY, "-m", "model_provisioner", "--cache-dir", str(cache), "-q", "ensure", url],
                    stdout=subprocess.DEVNULL,
                    env={**os.environ, **self.env()},
                )
                for _ in range(8)
            ]
            assert all(p.wait(timeout=600) == 0 for p in procs)

        def one() -> None:
            cache = self.work / "c7b"
            shutil.rmtree(cache, ignore_errors=True)
            self.ours(cache, "ensure", url)

        before = self.nginx.bytes_served().get("/data/c8.bin", 0)
        eight_time = timed(eight)
        served = self.nginx.bytes_served().get("/data/c8.bin", 0) - before
        one_time = timed(one)
        self.add(
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

    def s8_kill_resume(self) -> None:
        size = (24 if self.quick else 256) * MiB
        path, digest = self.lfs_file("kill.bin", size)
        commit = self.hub_repo("bench/kill", {"model.bin": (path, digest)})
        self.hub.cdn.url = self.limited.url
        ours_factors: list[float] = []
        peer_factors: list[float] = []
        try:
            for _ in range(self.rounds):  # A B A B: where the kill lands varies, so one kill is one sample
                ours_factors.append(
                    self._kill_once(
                        lambda: [
                            PY,
                            "-m",
                            "model_provisioner",
                            "--cache-dir",
                            str(self.work / "c8"),
                            "-q",
                            "ensure",
                            "hf:bench/kill/model.bin",
                        ],
                        self.work / "c8" / "partial",
                        size,
                        digest,
                    )
                )
                peer_factors.append(
                    self._kill_once(
                        lambda: [
                            self.hf_python,
                            "-c",
                            "from huggingface_hub import hf_hub_download as d; d('bench/kill', "
                            f"'model.bin', cache_dir={str(self.work / 'hf8')!r})",
                        ],
                        self.work / "hf8",
                        size,
                        digest,
                    )
                )
        finally:
            self.hub.cdn.url = self.nginx.url
        del commit
        ours, peer = statistics.median(ours_factors), statistics.median(peer_factors)
        self.add(
            Result(
                "8_kill_9_at_50pct_then_rerun",
                ours_factors,
                peer_factors,
                "hf_hub_download",
                "bytes/size <= 1.05",
                ours,
                unit="x",
                extra={
                    "ours bytes/size": f"{ours:.3f} [{min(ours_factors):.3f}-{max(ours_factors):.3f}]",
                    "peer bytes/size": f"{peer:.3f} [{min(peer_factors):.3f}-{max(peer_factors):.3f}]",
                },
            )
        )

    def _kill_once(self, cmd: Callable[[], list[str]], watch: Path, size: int, digest: str) -> float:
        """Bytes the origin served for one ``kill -9`` once half the file has arrived, then a rerun, over the size.
        "Arrived" counts the partial file's allocated blocks: a download in parallel ranges writes a sparse file
        whose apparent size runs ahead of what it holds."""
        key = f"/lfs/{digest}"
        shutil.rmtree(watch.parent if watch.name == "partial" else watch, ignore_errors=True)
        before = self.limited.bytes_served().get(key, 0)
        proc = subprocess.Popen(
            cmd(), env={**os.environ, **self.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        while _largest_file_held(watch) < size // 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # nginx logs the cut connection
        run(cmd(), self.env())
        time.sleep(0.2)
        return (self.limited.bytes_served().get(key, 0) - before) / size

    def s9_verify(self) -> None:
        size = (8 if self.quick else 512) * MiB
        files = [random_file(self.www / "data" / f"v{i}.bin", size) for i in range(4)]
        cache = self.work / "c9"
        if not (cache / "catalog.db").exists():
            from model_provisioner import ModelProvisioner, Settings

            with ModelProvisioner(Settings.from_env(cache_dir=cache)) as prov:
                for i, f in enumerate(files):
                    prov.register_model(f"https://bench.example/v{i}.bin", f)

        def hashlib_one_core() -> None:
            for f in files:
                with open(f, "rb") as fh:
                    hashlib.file_digest(fh, "sha256")

        a, b = alternate(lambda: self.ours(cache, "verify", "--all"), hashlib_one_core, self.rounds)
        self.add(_ratio("9_verify_4_files_vs_hashlib_one_core", a, b, "hashlib (1 core)", ">= 1.6"))

    def s10_rss(self) -> None:
        sizes = [4, 16, 64] if self.quick else [256, 1024, 4096]
        rss: dict[int, float] = {}
        for mib in sizes:
            _, _ = self.lfs_file(f"rss{mib}.bin", mib * MiB)
            cache = self.work / "c10"
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
                    f"{self.nginx.url}/data/rss{mib}.bin",
                ],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, **self.env()},
            )
            rss[mib] = int(out.stdout.split()[-1]) / 1024  # KiB -> MiB
        peak = max(rss.values())
        self.add(
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

    # ----------------------------------------------------------------- registries (issue 4)
    def s11_s3_vs_boto3(self) -> None:
        """One big object from moto's S3 server: ours (pre-signed URL through the engine) vs boto3's
        download_file with its defaults (multipart ranged GETs, 10 threads)."""
        from tests.servers.s3 import S3Server

        server = S3Server(self.work / "moto")
        try:
            client = server.client()
            client.create_bucket(Bucket="bench")
            path = random_file(self.work / "s3-src.bin", self.big)
            digest = _sha_stream(path)
            client.upload_file(str(path), "bench", "big.bin")
            env = server.env()
            cache, out = self.work / "c11", self.work / "boto3.out"
            peer = (
                f"import boto3; boto3.client('s3', endpoint_url={server.url!r}).download_file('bench', "
                f"'big.bin', {str(out)!r})"
            )
            a, b = alternate(
                lambda: self.ours(cache, "ensure", "s3://bench/big.bin", "--digest", f"sha256:{digest}", env=env),
                lambda: run([PY, "-c", peer], self.env(**env)),
                self.rounds,
                lambda: (shutil.rmtree(cache, ignore_errors=True), out.unlink(missing_ok=True), drop_page_cache_hint()),
            )
            self.add(_ratio("11a_cold_s3_vs_boto3_download_file", a, b, "boto3 download_file", "report"))
            # moto answers every ranged GET slowly (download_file's defaults send 8 MiB ranges on 10 threads):
            # one plain streamed GetObject separates the server's cost from the client's
            stream = (
                f"import boto3, shutil; b = boto3.client('s3', endpoint_url={server.url!r}).get_object("
                f"Bucket='bench', Key='big.bin')['Body']; shutil.copyfileobj(b, open({str(out)!r}, 'wb'), "
                "1 << 20)"
            )
            a, b = alternate(
                lambda: self.ours(cache, "ensure", "s3://bench/big.bin", "--digest", f"sha256:{digest}", env=env),
                lambda: run([PY, "-c", stream], self.env(**env)),
                self.rounds,
                lambda: (shutil.rmtree(cache, ignore_errors=True), out.unlink(missing_ok=True), drop_page_cache_hint()),
            )
            self.add(_ratio("11b_cold_s3_vs_boto3_get_object_stream", a, b, "boto3 get_object stream", "report"))
        finally:
            server.close()

    def s12_oci_vs_oras(self) -> None:
        """One big blob from Debian's docker-registry: ours vs ORAS (oras-py ``pull``) on the same artifact."""
        from tests.servers.registry import Registry

        from model_provisioner.config.settings import Settings
        from model_provisioner.net.registry.client import RegistryClient

        registry = Registry(self.work / "registry")
        try:
            path = random_file(self.work / "oci-src.bin", self.big)
            digest = "sha256:" + _sha_stream(path)
            with RegistryClient(registry.host, Settings()) as client:
                client.upload_blob("bench/big", path, digest, path.stat().st_size)
                config = client.upload_bytes("bench/big", b"{}")
                manifest = {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "artifactType": "application/vnd.unknown.artifact.v1",
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": digest,
                            "size": path.stat().st_size,
                            "annotations": {"org.opencontainers.image.title": "model.bin"},
                        }
                    ],
                }
                client.put_manifest(
                    "bench/big", "v1", json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json"
                )
            cache, outdir = self.work / "c12", self.work / "oras-out"
            peer = (
                f"import oras.client; oras.client.OrasClient(hostname={registry.host!r}, insecure=True)"
                f".pull(target={registry.host + '/bench/big:v1'!r}, outdir={str(outdir)!r})"
            )
            a, b = alternate(
                lambda: self.ours(cache, "ensure", f"oci://{registry.host}/bench/big:v1"),
                lambda: run([PY, "-c", peer]),
                self.rounds,
                lambda: (
                    shutil.rmtree(cache, ignore_errors=True),
                    shutil.rmtree(outdir, ignore_errors=True),
                    drop_page_cache_hint(),
                ),
            )
            self.add(_ratio("12_cold_oci_blob_vs_oras_pull", a, b, "oras-py pull", "report"))
        finally:
            registry.close()

    def s13_cpu_bound_origin(self) -> None:
        s13_cpu_bound_origin(self)

    def s14_shaped_link(self) -> None:
        s14_shaped_link(self)

    def plot_connections(self) -> Path | None:
        size = (16 if self.quick else 512) * MiB
        _, _ = self.lfs_file("conn.bin", size)
        url = f"{self.limited.url}/data/conn.bin"
        conns = [1, 2, 4, 8, 16]
        ours_mbps, aria_mbps = [], []
        for n in conns:
            settings = self.work / f"conn{n}.json"
            settings.write_text(
                json.dumps(
                    {
                        "transfer": {
                            "connections": n,
                            "adaptive_connections": False,
                            "parallel_threshold_bytes": MiB,
                            "parallel_chunk_min_bytes": MiB,
                            "single_stream_enough_bytes_per_s": 1e15,
                        }
                    }
                )
            )
            cache, out = self.work / "cc", self.work / "ca"
            ours_cmd = [PY, "-m", "model_provisioner", "--cache-dir", str(cache), "-q", "ensure", url]
            ours_env = {"MODEL_PROVISIONER_SETTINGS": str(settings)}
            aria_cmd = ["aria2c", "-q", f"-x{n}", f"-s{n}", "-k1M", "-d", str(out), "-o", "f", url]

            def fresh(cache: Path = cache, out: Path = out) -> None:
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()

            a, b = alternate(
                lambda cmd=ours_cmd, env=ours_env: run(cmd, env),  # type: ignore[misc]
                lambda cmd=aria_cmd: run(cmd),
                self.rounds,
                fresh,
            )  # type: ignore[misc]
            ours_mbps.append(size / statistics.median(a) / 1e6)
            aria_mbps.append(size / statistics.median(b) / 1e6)
        print(
            "connections:",
            conns,
            "ours MB/s:",
            [round(x) for x in ours_mbps],
            "aria2c MB/s:",
            [round(x) for x in aria_mbps],
            flush=True,
        )
        # the controller's own choice on the same capped origin (connections up to 16)
        settings = self.work / "conn-auto.json"
        settings.write_text(json.dumps({"transfer": {"connections": 16}}))
        shutil.rmtree(self.work / "cc", ignore_errors=True)
        auto_cmd = [PY, "-m", "model_provisioner", "--cache-dir", str(self.work / "cc"), "-v", "ensure", url]
        start = time.perf_counter()
        log = run_stderr(auto_cmd, {"MODEL_PROVISIONER_SETTINGS": str(settings)})
        rate = size / (time.perf_counter() - start) / 1e6
        self.choices[f"limit_rate {self.rate_limit}"] = (chosen_connections(log), rate)
        print("controller's choices:", {k: (n, round(r)) for k, (n, r) in self.choices.items()}, flush=True)
        self.connection_table = list(zip(conns, ours_mbps, aria_mbps, strict=True))
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot", flush=True)
            return None
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(conns, ours_mbps, "o-", label="model-provisioner")
        ax.plot(conns, aria_mbps, "s--", label="aria2c -x N -s N")
        for i, (scenario, (n, rate)) in enumerate(sorted(self.choices.items())):
            ax.plot([n], [rate], "*", markersize=12, label=f"controller: {scenario} ({n})", color=f"C{i + 2}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(conns, [str(c) for c in conns])
        ax.set_xlabel("connections")
        ax.set_ylabel("MB/s")
        ax.set_title(f"{size // MiB} MiB, nginx limit_rate {self.rate_limit} per connection")
        ax.legend()
        ax.grid(True, alpha=0.3)
        out_png = Path(self.args.out_dir) / (
            "benchmarks-connections-quick.png" if self.quick else "benchmarks-connections.png"
        )
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out_png, dpi=110)
        return out_png


def _sha_stream(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _link_lfs(www: Path, path: Path) -> str:
    digest = _sha_stream(path)
    target = www / "lfs" / digest
    if not target.exists():
        os.link(path, target)
    return digest


def _largest_file_held(root: Path) -> int:
    """The most bytes any file under ``root`` holds (allocated blocks, capped at its size)."""
    best = 0
    if root.exists():
        for dirpath, _, names in os.walk(root):
            for name in names:
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(dirpath, name))
                    best = max(best, min(st.st_size, st.st_blocks * 512))
    return best


def _rate(cmd: list[str], env: dict[str, str]) -> float:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **env})
    return float(out.stdout.strip().splitlines()[-1])


def _ratio(name: str, ours: list[float], peer: list[float], peer_name: str, goal: str, unit: str = "s") -> Result:
    result = Result(name, ours, peer, peer_name, goal, statistics.median(peer) / statistics.median(ours))
    result.unit = unit
    return result


SCENARIOS = [
    "s1_https_vs_curl",
    "s2_hf_single",
    "s3_hf_repo",
    "s4_rate_limited",
    "s5_warm_in_process",
    "s6_warm_cli",
    "s7_concurrent",
    "s8_kill_resume",
    "s9_verify",
    "s10_rss",
    "s11_s3_vs_boto3",
    "s12_oci_vs_oras",
    "s13_cpu_bound_origin",
    "s14_shaped_link",
]


def machine() -> str:
    mem = cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), {mem.split(':')[-1].strip()}, "
        f"Python {platform.python_version()}"
    )


def write_report(suite: Suite, png: Path | None, started: float, argv: list[str]) -> Path:
    out = Path(suite.args.out_dir) / ("benchmarks-quick.md" if suite.quick else "benchmarks.md")
    lines = [
        "# Benchmarks" + (" (quick mode: small files, for the test suite)" if suite.quick else ""),
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- command: `bench/run {' '.join(argv)}` ({time.monotonic() - started:.0f} s)",
        f"- rounds per pair: {suite.rounds}, alternating ours and the peer; median [min-max]",
        "- servers on 127.0.0.1: Debian nginx (CDN, `limit_rate` for capped connections), the project's fake Hub, "
        "moto's S3 server, Debian's docker-registry",
        "- ratio: for times, peer / ours (higher is better for us); rows 7, 8, 10 say what they measure",
        "",
        "| scenario | ours | peer | ratio | goal | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in suite.results:
        notes = ", ".join(f"{k} {v}" for k, v in r.extra.items())
        lines.append(
            f"| {r.name} | {fmt(r.ours, r.unit)} | {r.peer_name}: {fmt(r.peer, r.unit)} | {r.ratio:.2f} | "
            f"{r.goal} | {notes} |"
        )
    if suite.choices:
        lines += [
            "",
            "## Connections the fan-out controller chose",
            "",
            "| scenario | connections | MB/s |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {n} | {r:.0f} |" for k, (n, r) in sorted(suite.choices.items())]
    if getattr(suite, "connection_table", None):
        lines += [
            "",
            "## Throughput vs connections (per-connection cap)",
            "",
            "| connections | ours MB/s | aria2c MB/s |",
            "|---|---|---|",
        ]
        lines += [f"| {c} | {o:.0f} | {a:.0f} |" for c, o, a in suite.connection_table]
    if png is not None:
        lines += ["", f"![throughput vs connections]({png.name})"]
    notes = ""  # what a person wrote below the marker (readings, before/after) survives a new run
    if out.exists() and NOTES_MARKER in out.read_text():
        notes = out.read_text().split(NOTES_MARKER, 1)[1]
    out.write_text("\n".join(lines) + "\n\n" + NOTES_MARKER + notes.rstrip("\n") + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small files, < 3 minutes (the test suite runs this)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--only", action="append", default=[], help="scenario name prefix, e.g. s1 (repeatable)")
    parser.add_argument("--hf-python", help="python of the isolated huggingface_hub venv (bench/run makes it)")
    parser.add_argument("--workdir")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    try:  # before the first scenario: a report that cannot be written must not cost a whole run
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".mprov-bench-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        shown = str(out_dir)[:200]
        parser.error(f"--out-dir {shown!r} cannot hold the report ({exc.strerror}); name a writable directory")
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    started = time.monotonic()
    suite = Suite(args)
    png = None
    try:
        for name in SCENARIOS:
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            if name in ("s4_rate_limited", "s5_warm_in_process", "s6_warm_cli") and not hasattr(suite, "single_commit"):
                _prepare_single(suite)  # the Hub repo that scenario 2 would have created
            getattr(suite, name)()
        if not args.no_plot and (not args.only or "plot" in args.only):
            png = suite.plot_connections()
    finally:
        suite.close()
        if not args.workdir:  # a full run writes ~25 GB of test files: never leave them behind
            shutil.rmtree(suite.work, ignore_errors=True)
    report = write_report(suite, png, started, sys.argv[1:] if argv is None else argv)
    print(f"report: {report}", flush=True)
    return 0


def _prepare_single(suite: Suite) -> None:
    path, digest = suite.lfs_file("single.bin", suite.big)
    suite.single_commit = suite.hub_repo("bench/single", {"model.bin": (path, digest)})


if __name__ == "__main__":
    raise SystemExit(main())
