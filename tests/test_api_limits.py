"""What the HTTP API bounds: request bodies (413) and refs (quoted short), slow jobs that never block local
work, probes or shutdown, and finished jobs that expire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import run_cli
from .helpers import payload, wait_for


# ------------------------------------------------------ 13. bounded request bodies and bounded quoting
def test_huge_request_bodies_are_413_and_huge_refs_are_quoted_short(api_factory: Any, cache_dir: Path) -> None:
    c = api_factory().client
    huge = b'{"ref": "' + b"a" * (100 << 20) + b'"}'
    answer = c.post("/v1/models/ensure", content=huge, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"

    def chunks() -> Any:  # no Content-Length: cut once past the cap
        yield b'{"ref": "'
        for _ in range(100):
            yield b"b" * (1 << 20)
        yield b'"}'

    answer = c.post("/v1/models/ensure", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert c.get("/healthz").status_code == 200
    long_ref = c.post("/v1/models/ensure", json={"ref": "hf:" + "x" * 50_000})
    assert long_ref.status_code == 400 and len(long_ref.text) < 600, long_ref.text
    cli = run_cli("ensure", "hf:org/" + "y" * 100_000, cache_dir=cache_dir)
    assert cli.code == 2 and len(cli.stderr) < 600 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr


# ------------------------------------------- 7 (API). slow origins never starve probes, local work or SIGTERM
def test_slow_jobs_never_block_local_work_probes_or_shutdown(
    api_factory: Any, fileserver: Any, tmp_path: Path, gguf_file: Path, cache_dir: Path
) -> None:
    import signal
    import threading
    import time

    import httpx

    from .servers.fileserver import Fault

    data = payload(3000, seed=7)
    slow = []
    for i in range(6):
        url = fileserver.put(f"slow{i}.bin", data)
        fileserver.faults[f"/slow{i}.bin"] = Fault(drip_s=0.05)  # 20 B/s: minutes per file
        slow.append(url)
    api = api_factory(
        settings={
            "api_file_roots": [str(gguf_file.parent)],
            "api_max_sync_fetches": 4,
            "transfer": {"min_rate_bytes_per_s": 0, "stall_timeout_s": 30, "attempts": 1},
        }
    )
    c = api.client
    for url in slow[:4]:
        assert c.post("/v1/models/ensure", params={"wait": "false"}, json={"ref": url}).status_code == 202
    local = c.post("/v1/models/ensure", params={"wait": "false"}, json={"ref": str(gguf_file)}).json()
    finished = lambda: c.get(f"/v1/jobs/{local['id']}").json()["state"] not in ("queued", "running")  # noqa: E731
    wait_for(finished, 10, "the local job (it must not wait behind slow downloads)")  # the bound is the feature
    assert c.get(f"/v1/jobs/{local['id']}").json()["state"] == "succeeded"
    # more synchronous slow ensures than the bound: the rest are told to come back, probes still answer
    answers: list[int] = []

    def sync(url: str) -> None:
        with httpx.Client(base_url=api.url, headers=dict(c.headers), timeout=3) as own:
            try:
                answers.append(own.post("/v1/models/ensure", json={"ref": url}).status_code)
            except httpx.TimeoutException:
                answers.append(0)

    threads = [threading.Thread(target=sync, args=(slow[4 + i % 2] + f"?n={i}",), daemon=True) for i in range(12)]
    for t in threads:
        t.start()
    wait_for(lambda: answers.count(503) >= 8, 10, "the bound to be full (the rest told 503)")
    probe_start = time.monotonic()
    assert c.get("/healthz", timeout=5).status_code == 200
    assert time.monotonic() - probe_start < 3.0  # the feature: a probe answers while every worker is busy
    for t in threads:
        t.join(timeout=10)
    assert answers.count(503) >= 8, answers
    # SIGTERM with slow transfers running: the server is gone within seconds, partials kept
    partials = wait_for(lambda: sorted((cache_dir / "partial").glob("*.part")), 10, "a running download")
    stopped = time.monotonic()
    api.proc.send_signal(signal.SIGTERM)
    api.proc.wait(timeout=15)
    assert time.monotonic() - stopped < 10
    assert all(p.exists() for p in partials), api.logs()[-2000:]


def test_finished_jobs_expire() -> None:
    """On the registry's own clock, moved by the test: no sleep decides the outcome."""
    from model_provisioner.server.jobs import Job, JobRegistry

    now = [1000.0]
    registry = JobRegistry(2, ttl_s=60, max_jobs=5, clock=lambda: now[0])
    jobs = [Job(str(i), "file:/m") for i in range(20)]

    def work(job: Job) -> None:
        job.state = "succeeded"

    def all_finished(items: list[Job]) -> bool:
        return bool(wait_for(lambda: all(j.finished_at is not None for j in items), 30, "the jobs to finish"))

    for job in jobs:
        registry.submit(job, None, work)
    assert all_finished(jobs)
    assert len(registry) == 5  # never more than max_jobs finished ones
    now[0] += 59
    assert registry.get("19") is not None  # within its ttl
    now[0] += 2
    assert registry.get("19") is None and len(registry) == 0
    broken = Job("b", "file:/m")

    def divide_by_zero(job: Job) -> None:
        job.result = {"never": 1 / 0}

    registry.submit(broken, "origin", divide_by_zero)
    assert all_finished([broken])
    assert broken.state == "failed" and "ZeroDivisionError" in (broken.error or {}).get("message", "")
    registry.shutdown()
