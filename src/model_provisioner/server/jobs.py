"""The HTTP API's background ensure jobs: bounded per origin, local work never behind slow downloads, and
finished jobs expire.

- Jobs for local files run on their own small pool: hashing a local file never waits behind downloads.
- Remote jobs run on the download pool, at most ``per_origin`` at once for one origin (a Hub, a registry,
  an https host); more jobs for that origin wait in its queue *without* holding a worker, so one slow
  origin cannot take every worker from the others.
- A finished job is kept ``ttl_s`` for its caller to read, then forgotten; the registry never holds more than
  ``max_jobs`` (the oldest finished go first).
- Jobs not finished yet (running, or queued behind their origin) are bounded too: past ``max_pending`` a new
  job is refused (503, ``api_max_queued_jobs``) instead of queueing for ever.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from model_provisioner.core.errors import ServerBusy
from model_provisioner.core.refs import FileRef, HfRef, ModelRef, OciRef, S3Ref, UrlRef


@dataclass
class Job:
    id: str
    ref: str
    state: str = "queued"  # queued | running | succeeded | failed
    bytes_done: int = 0
    bytes_total: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_at: float | None = None  # monotonic seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": self.ref,
            "state": self.state,
            "progress": {"bytes_done": self.bytes_done, "bytes_total": self.bytes_total},
            "result": self.result,
            "error": self.error,
        }


def origin_of_ref(ref: ModelRef) -> str | None:
    """Where a ref's bytes come from (None: this machine)."""
    if isinstance(ref, FileRef):
        return None
    if isinstance(ref, UrlRef):
        return f"{ref.host}:{ref.port or ''}"
    if isinstance(ref, HfRef):
        return "hf"
    if isinstance(ref, S3Ref):
        return f"s3:{ref.bucket}"
    if isinstance(ref, OciRef):
        return f"oci:{ref.registry}"
    return ref.scheme


class JobRegistry:
    def __init__(
        self,
        remote_workers: int,
        *,
        per_origin: int = 2,
        ttl_s: float = 3600.0,
        max_jobs: int = 10_000,
        max_pending: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: seconds, for the expiry of finished jobs (a test moves it instead of sleeping)."""
        self.clock = clock
        self.per_origin = max(1, per_origin)
        self.max_pending = max(1, max_pending)
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[Callable[[], None]]] = {}
        self._remote = ThreadPoolExecutor(max_workers=remote_workers, thread_name_prefix="mprov-job")
        self._local = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mprov-local-job")

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._expire()
            return self._jobs.get(job_id)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._jobs)

    def submit(self, job: Job, origin: str | None, work: Callable[[Job], None]) -> None:
        """Run ``work(job)``; it sets the job's result or error. Exceptions become a failed job."""

        def run() -> None:
            job.state = "running"
            try:
                work(job)
            except Exception as exc:  # a bug must not leave the job "running" for good
                job.error = {"code": "unexpected", "message": f"{type(exc).__name__}: {exc}"[:500]}
                job.state = "failed"
            finally:
                job.finished_at = self.clock()
                if origin is not None:
                    self._finished(origin)

        with self._lock:
            self._expire()
            pending = sum(1 for j in self._jobs.values() if j.finished_at is None)
            if pending >= self.max_pending:
                raise ServerBusy(
                    f"{pending} jobs are already queued or running (api_max_queued_jobs: {self.max_pending}); "
                    "retry later"
                )
            self._jobs[job.id] = job
            if origin is None:
                self._local.submit(run)
                return
            if self._running.get(origin, 0) >= self.per_origin:
                self._waiting.setdefault(origin, deque()).append(run)
                return
            self._running[origin] = self._running.get(origin, 0) + 1
        self._remote.submit(run)

    def _finished(self, origin: str) -> None:
        with self._lock:
            queue = self._waiting.get(origin)
            if queue:
                self._remote.submit(queue.popleft())  # the slot passes to the next job of this origin
                if not queue:
                    del self._waiting[origin]
                return
            self._running[origin] -= 1
            if not self._running[origin]:
                del self._running[origin]

    def _expire(self) -> None:
        now = self.clock()
        gone = [j.id for j in self._jobs.values() if j.finished_at is not None and now - j.finished_at > self.ttl_s]
        for job_id in gone:
            del self._jobs[job_id]
        if len(self._jobs) > self.max_jobs:
            done = (j for j in self._jobs.values() if j.finished_at is not None)
            finished = sorted(done, key=lambda j: j.finished_at or 0.0)
            for job in finished[: len(self._jobs) - self.max_jobs]:
                del self._jobs[job.id]

    def shutdown(self) -> None:
        """Stop taking work: queued jobs are dropped, running ones finish or are cancelled by the caller."""
        with self._lock:
            self._waiting.clear()
        self._remote.shutdown(wait=False, cancel_futures=True)
        self._local.shutdown(wait=False, cancel_futures=True)
