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
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import scenarios_local  # noqa: E402
import scenarios_origin  # noqa: E402
import scenarios_registry  # noqa: E402
import scenarios_transfer  # noqa: E402
from harness import (  # noqa: E402
    PY,
    MiB,
    Result,
    fmt,
    random_file,
    run,
    sha_stream,
)

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
        #: (connections, ours MB/s, aria2c MB/s) of the connections plot, when it ran
        self.connection_table: list[tuple[int, float, float]] = []
        self._single_commit: str | None = None
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
        digest = sha_stream(path)  # streaming: this process stays small (its forks inherit its RSS)
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

    def single_repo(self) -> str:
        """The commit of the Hub repo ``bench/single`` (one big file), made on first use: scenario 2 measures
        its download; scenarios 4, 5 and 6 use it too, whether or not scenario 2 ran."""
        if self._single_commit is None:
            path, digest = self.lfs_file("single.bin", self.big)
            self._single_commit = self.hub_repo("bench/single", {"model.bin": (path, digest)})
        return self._single_commit

    def hf(self, code: str, env: dict[str, str] | None = None) -> None:
        run([self.hf_python, "-c", code], self.env(**(env or {})))

    # ---------------------------------------------------------------------------------- scenarios

    # ----------------------------------------------------------------- registries (issue 4)


#: every scenario, in the order of the report; each takes the suite (its servers and data) and needs nothing an
#: earlier one left: what several use is made on first use (``Suite.single_repo``)
SCENARIOS: dict[str, Callable[[Suite], None]] = {
    "s1_https_vs_curl": scenarios_transfer.s1_https_vs_curl,
    "s2_hf_single": scenarios_transfer.s2_hf_single,
    "s3_hf_repo": scenarios_transfer.s3_hf_repo,
    "s4_rate_limited": scenarios_transfer.s4_rate_limited,
    "s5_warm_in_process": scenarios_local.s5_warm_in_process,
    "s6_warm_cli": scenarios_local.s6_warm_cli,
    "s7_concurrent": scenarios_local.s7_concurrent,
    "s8_kill_resume": scenarios_transfer.s8_kill_resume,
    "s9_verify": scenarios_local.s9_verify,
    "s10_rss": scenarios_local.s10_rss,
    "s11_s3_vs_boto3": scenarios_registry.s11_s3_vs_boto3,
    "s12_oci_vs_oras": scenarios_registry.s12_oci_vs_oras,
    "s13_cpu_bound_origin": scenarios_origin.s13_cpu_bound_origin,
    "s14_shaped_link": scenarios_origin.s14_shaped_link,
}


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
    if suite.connection_table:
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
        for name, scenario in SCENARIOS.items():
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            scenario(suite)
        if not args.no_plot and (not args.only or "plot" in args.only):
            png = scenarios_registry.plot_connections(suite)
    finally:
        suite.close()
        if not args.workdir:  # a full run writes ~25 GB of test files: never leave them behind
            shutil.rmtree(suite.work, ignore_errors=True)
    report = write_report(suite, png, started, sys.argv[1:] if argv is None else argv)
    print(f"report: {report}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
