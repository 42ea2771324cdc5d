"""The benchmark harness runs end to end (quick mode) and produces numbers; speed itself is never asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about two minutes: every peer (nginx, aria2c, the Hub, S3, a registry) once
def test_bench_run_quick_produces_a_report(tmp_path: Path) -> None:
    out = tmp_path / "not" / "yet"  # an output directory that does not exist yet is made before the first scenario
    result = subprocess.run(
        [str(ROOT / "bench" / "run"), "--quick", "--out-dir", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if re.match(r"^\d+[ab]?_\w+: ours ", line)]
    # fourteen scenarios: the fourth and the eleventh against two peers, the thirteenth at two sizes
    assert len(lines) == 17, result.stdout
    for line in lines:
        assert re.search(r"ratio \d+\.\d\d \(goal ", line), line
    report = (out / "benchmarks-quick.md").read_text()
    assert report.count("\n| ") >= 15 and "machine:" in report
    assert (out / "benchmarks-connections-quick.png").stat().st_size > 1000


def test_bench_run_refuses_an_unwritable_out_dir_before_running_anything(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "suite.py"),
            "--quick",
            "--out-dir",
            str(blocker / "out"),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "--out-dir" in result.stderr and not (tmp_path / "work").exists()
