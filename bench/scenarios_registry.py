"""Scenarios 11 and 12 of the suite, and the connections plot: ``s3://`` vs boto3, ``oci://`` vs oras-py, and
throughput against the number of connections under a per-connection cap (vs ``aria2c``)."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness import (
    PY,
    MiB,
    alternate,
    chosen_connections,
    drop_page_cache_hint,
    random_file,
    ratio,
    run,
    run_stderr,
    sha_stream,
)

if TYPE_CHECKING:
    from suite import Suite


def s11_s3_vs_boto3(suite: Suite) -> None:
    """One big object from moto's S3 server: ours (pre-signed URL through the engine) vs boto3's
    download_file with its defaults (multipart ranged GETs, 10 threads)."""
    from tests.servers.s3 import S3Server

    server = S3Server(suite.work / "moto")
    try:
        client = server.client()
        client.create_bucket(Bucket="bench")
        path = random_file(suite.work / "s3-src.bin", suite.big)
        digest = sha_stream(path)
        client.upload_file(str(path), "bench", "big.bin")
        env = server.env()
        cache, out = suite.work / "c11", suite.work / "boto3.out"
        peer = (
            f"import boto3; boto3.client('s3', endpoint_url={server.url!r}).download_file('bench', "
            f"'big.bin', {str(out)!r})"
        )
        a, b = alternate(
            lambda: suite.ours(cache, "ensure", "s3://bench/big.bin", "--digest", f"sha256:{digest}", env=env),
            lambda: run([PY, "-c", peer], suite.env(**env)),
            suite.rounds,
            lambda: (shutil.rmtree(cache, ignore_errors=True), out.unlink(missing_ok=True), drop_page_cache_hint()),
        )
        suite.add(ratio("11a_cold_s3_vs_boto3_download_file", a, b, "boto3 download_file", "report"))
        # moto answers every ranged GET slowly (download_file's defaults send 8 MiB ranges on 10 threads):
        # one plain streamed GetObject separates the server's cost from the client's
        stream = (
            f"import boto3, shutil; b = boto3.client('s3', endpoint_url={server.url!r}).get_object("
            f"Bucket='bench', Key='big.bin')['Body']; shutil.copyfileobj(b, open({str(out)!r}, 'wb'), "
            "1 << 20)"
        )
        a, b = alternate(
            lambda: suite.ours(cache, "ensure", "s3://bench/big.bin", "--digest", f"sha256:{digest}", env=env),
            lambda: run([PY, "-c", stream], suite.env(**env)),
            suite.rounds,
            lambda: (shutil.rmtree(cache, ignore_errors=True), out.unlink(missing_ok=True), drop_page_cache_hint()),
        )
        suite.add(ratio("11b_cold_s3_vs_boto3_get_object_stream", a, b, "boto3 get_object stream", "report"))
    finally:
        server.close()


def s12_oci_vs_oras(suite: Suite) -> None:
    """One big blob from Debian's docker-registry: ours vs ORAS (oras-py ``pull``) on the same artifact."""
    from tests.servers.registry import Registry

    from model_provisioner.config.settings import Settings
    from model_provisioner.net.registry.client import RegistryClient

    registry = Registry(suite.work / "registry")
    try:
        path = random_file(suite.work / "oci-src.bin", suite.big)
        digest = "sha256:" + sha_stream(path)
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
        cache, outdir = suite.work / "c12", suite.work / "oras-out"
        peer = (
            f"import oras.client; oras.client.OrasClient(hostname={registry.host!r}, insecure=True)"
            f".pull(target={registry.host + '/bench/big:v1'!r}, outdir={str(outdir)!r})"
        )
        a, b = alternate(
            lambda: suite.ours(cache, "ensure", f"oci://{registry.host}/bench/big:v1"),
            lambda: run([PY, "-c", peer]),
            suite.rounds,
            lambda: (
                shutil.rmtree(cache, ignore_errors=True),
                shutil.rmtree(outdir, ignore_errors=True),
                drop_page_cache_hint(),
            ),
        )
        suite.add(ratio("12_cold_oci_blob_vs_oras_pull", a, b, "oras-py pull", "report"))
    finally:
        registry.close()


def plot_connections(suite: Suite) -> Path | None:
    size = (16 if suite.quick else 512) * MiB
    _, _ = suite.lfs_file("conn.bin", size)
    url = f"{suite.limited.url}/data/conn.bin"
    conns = [1, 2, 4, 8, 16]
    ours_mbps, aria_mbps = [], []
    for n in conns:
        settings = suite.work / f"conn{n}.json"
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
        cache, out = suite.work / "cc", suite.work / "ca"
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
            suite.rounds,
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
    settings = suite.work / "conn-auto.json"
    settings.write_text(json.dumps({"transfer": {"connections": 16}}))
    shutil.rmtree(suite.work / "cc", ignore_errors=True)
    auto_cmd = [PY, "-m", "model_provisioner", "--cache-dir", str(suite.work / "cc"), "-v", "ensure", url]
    start = time.perf_counter()
    log = run_stderr(auto_cmd, {"MODEL_PROVISIONER_SETTINGS": str(settings)})
    rate = size / (time.perf_counter() - start) / 1e6
    suite.choices[f"limit_rate {suite.rate_limit}"] = (chosen_connections(log), rate)
    print("controller's choices:", {k: (n, round(r)) for k, (n, r) in suite.choices.items()}, flush=True)
    suite.connection_table = list(zip(conns, ours_mbps, aria_mbps, strict=True))
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
    for i, (scenario, (n, rate)) in enumerate(sorted(suite.choices.items())):
        ax.plot([n], [rate], "*", markersize=12, label=f"controller: {scenario} ({n})", color=f"C{i + 2}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(conns, [str(c) for c in conns])
    ax.set_xlabel("connections")
    ax.set_ylabel("MB/s")
    ax.set_title(f"{size // MiB} MiB, nginx limit_rate {suite.rate_limit} per connection")
    ax.legend()
    ax.grid(True, alpha=0.3)
    out_png = Path(suite.args.out_dir) / (
        "benchmarks-connections-quick.png" if suite.quick else "benchmarks-connections.png"
    )
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png
