"""The supervisor of one pool: a small detached process that owns the engine.

It holds a lease on the model for as long as it runs (so gc, the LRU budget and ``rm`` never take a model an
engine serves), starts the engine and waits until it is ready, restarts it after a crash with backoff (1 s,
2 s, 4 s … capped), gives up (``crashed``) after ``engines.max_restarts`` crashes within
``engines.restart_window_s``, and stops the engine on SIGTERM (``down``). Every change of state is written to
``<cache>/run/<pool>.json`` (docs/engines.md).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from types import FrameType

from model_provisioner.core.errors import EngineFailed, EngineNotReady, ProvisionerError
from model_provisioner.core.processes import start_time
from model_provisioner.core.units import now_ms
from model_provisioner.engines import llamacpp, triton
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.process import spawn, terminate, wait_ready
from model_provisioner.engines.state import PoolState, RunDir
from model_provisioner.ops.leases import acquire_lease

log = logging.getLogger("model_provisioner")


class Supervisor:
    def __init__(self, host: EngineHost, pool: str) -> None:
        self.host = host
        self.settings = host.settings.engines
        self.run = RunDir(host.store.root / "run")
        recorded = self.run.recorded(pool)
        if recorded is None:
            raise ProvisionerError(f"no engine pool {pool!r} to supervise")
        me = os.getpid()
        self.state = replace(recorded, supervisor_pid=me, supervisor_start=start_time(me))
        self.stopping = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None

    def _write(self, **changes: object) -> None:
        self.state = replace(self.state, **changes)  # type: ignore[arg-type]
        self.run.write(self.state)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        # the engine starts first, so its model loads while the lease is written
        self.proc = spawn(self.state.argv, Path(self.state.log_path), self.state.env or None)
        lease = acquire_lease(
            self.host, self.state.model_id, holder=f"engine pool {self.state.pool_id}", pid=os.getpid()
        )
        self._write(lease_id=lease.lease_id)
        try:
            return self._loop()
        finally:
            if self.proc is not None:
                terminate(self.proc)
            self.host.catalog.remove_lease(lease.lease_id)
            if self.state.state != "crashed":
                self._write(state="stopped", stopped_ms=now_ms(), pid=None, pid_start=None)

    def _loop(self) -> int:
        crashes: deque[float] = deque()
        first = True
        while not self.stopping.is_set():
            try:
                self._start()
            except (EngineFailed, EngineNotReady) as exc:
                if first:  # ``up`` reports it: nothing is restarted, nothing stays running
                    self._write(state="crashed", error=str(exc), error_code=exc.code, pid=None, pid_start=None)
                    return 1
                log.warning("pool %s: %s", self.state.pool_id, exc)
            else:
                first = False
                self._watch()
            if self.stopping.is_set():
                break
            now = time.monotonic()
            crashes.append(now)
            while crashes and now - crashes[0] > self.settings.restart_window_s:
                crashes.popleft()
            if len(crashes) > self.settings.max_restarts:
                why = f"crashed {len(crashes)} times within {self.settings.restart_window_s:.0f}s; gave up"
                self._write(state="crashed", error=why, error_code="engine_failed", pid=None, pid_start=None)
                return 1
            delay = min(self.settings.restart_backoff_max_s, 2.0 ** (len(crashes) - 1))
            self._write(state="restarting", restarts=self.state.restarts + 1, pid=None, pid_start=None)
            self.stopping.wait(delay)
        return 0

    def _start(self) -> None:
        s = self.state
        log_path = Path(s.log_path)
        if self.proc is None:  # the first start was spawned in ``serve``
            self.proc = spawn(s.argv, log_path, s.env or None)
        self._write(
            state="starting" if s.state != "restarting" else "restarting",
            pid=self.proc.pid,
            pid_start=start_time(self.proc.pid),
            started_ms=now_ms(),
            error=None,
            error_code=None,
        )
        subject = f"{s.engine} (pool {s.pool_id})"
        try:
            wait_ready(self.proc, lambda: _is_ready(s), s.ready_timeout_s, log_path, subject)
        except EngineFailed as exc:
            failures = triton.load_failures(log_path) if s.engine == "triton" else ""
            if failures:
                raise EngineFailed(f"{subject}: models failed to load: {failures}") from exc
            raise
        if s.engine == "triton":
            triton.check_models(s.host, s.port, s.models, subject)
        else:
            llamacpp.check_metrics(s.host, s.port, subject)
        self._write(state="ready", ready_ms=now_ms())

    def _watch(self) -> None:
        """Until the engine exits or we are told to stop."""
        assert self.proc is not None
        while not self.stopping.is_set():
            if self.proc.poll() is not None:
                log.warning(
                    "pool %s: the engine exited (code %s); restarting", self.state.pool_id, self.proc.returncode
                )
                self.proc = None
                return
            self.stopping.wait(0.2)


def _is_ready(state: PoolState) -> bool:
    if state.engine == "triton":
        return triton.is_ready(state.host, state.port, state.models)
    return llamacpp.is_ready(state.host, state.port)


def supervise(host: EngineHost, pool: str) -> int:
    """The supervisor process's main: returns its exit status."""
    return Supervisor(host, pool).serve()
