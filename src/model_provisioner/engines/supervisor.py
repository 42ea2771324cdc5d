"""The supervisor of one pool: a small detached process that owns the engine.

It holds the pool's life lock (the proof that it is the pool's supervisor: ``ownership.py``) and a lease on
the model for as long as it runs (so gc, the LRU budget and ``rm`` never take a model an engine serves).
Before every start and restart it asks the catalog whether the model still answers (the fingerprint rule:
unchanged files cost one stat, changed ones are re-hashed; under the API, files must still be under
``api_file_roots`` reached without a link): a model whose bytes changed stops the pool (``failed``, the reason
named), never serves. It starts the engine with an allow-listed environment, waits until it is ready,
restarts it after a crash with backoff (1 s, 2 s, 4 s … capped), gives up (``crashed``) after
``engines.max_restarts`` crashes within ``engines.restart_window_s``, and stops the engine on SIGTERM
(``down``), also while it is still starting. Every change of state is written to ``<cache>/run/<pool>.json``
(docs/engines.md).
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import FrameType

from model_provisioner.core import failpoints
from model_provisioner.core.errors import (
    EngineBinaryChanged,
    EngineFailed,
    EngineNotReady,
    ModelChanged,
    ProvisionerError,
    UnsafeCachePath,
)
from model_provisioner.core.processes import start_time
from model_provisioner.core.redact import redact_text
from model_provisioner.core.units import now_ms
from model_provisioner.engines.binaries import BinaryIdentity, check_before_exec
from model_provisioner.engines.dispatch import kind_of
from model_provisioner.engines.handoff import update_handoff
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.ownership import life_lock, run_mark
from model_provisioner.engines.process import (
    StopRequested,
    engine_environment,
    register_env_secrets,
    spawn,
    terminate,
    wait_ready,
)
from model_provisioner.engines.state import PoolState, RunDir, check_pool_id
from model_provisioner.ops.leases import acquire_lease

log = logging.getLogger("model_provisioner")


class Supervisor:
    def __init__(self, host: EngineHost, launch: PoolState, engine_env: Mapping[str, str]) -> None:
        """``launch`` comes from ``up`` itself (in memory, or through stdin): never re-read from the state file,
        which others may write in a shared cache (its argv would be a command line of their choosing)."""
        self.host = host
        self.settings = host.settings.engines
        self.run = RunDir(host.store.root / "run")
        pool = check_pool_id(launch.pool_id)
        self.life = life_lock(host.store.locks_dir, pool)
        if not self.life.try_acquire():
            raise ProvisionerError(f"engine pool {pool!r} already has a supervisor (pid {self.life.holder_pid()})")
        me = os.getpid()
        self.state = replace(launch, supervisor_pid=me, supervisor_start=start_time(me))
        register_env_secrets(engine_env)
        self.env = engine_environment({**engine_env, **run_mark(self.state)})
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
        try:
            return self._loop()
        finally:
            if self.proc is not None:
                terminate(self.proc)
            if self.state.lease_id is not None:
                self.host.catalog.remove_lease(self.state.lease_id)
            if self.state.state not in ("crashed", "failed"):
                self._write(state="stopped", stopped_ms=now_ms(), pid=None, pid_start=None)
            self.life.release()

    def _loop(self) -> int:
        crashes: deque[float] = deque()
        first = True
        while not self.stopping.is_set():
            try:
                self._check_model()
                self._start()
            except (ModelChanged, EngineBinaryChanged) as exc:
                self._write(state="failed", error=str(exc), error_code=exc.code, pid=None, pid_start=None)
                return 1
            except StopRequested:
                break
            except (EngineFailed, EngineNotReady, UnsafeCachePath) as exc:
                if first:  # ``up`` reports it: nothing is restarted, nothing stays running
                    self._write(state="crashed", error=str(exc), error_code=exc.code, pid=None, pid_start=None)
                    return 1
                log.warning("pool %s: %s", self.state.pool_id, exc)
            except ProvisionerError as exc:  # nothing a restart could mend (the lease was refused…)
                self._write(state="crashed", error=str(exc), error_code=exc.code, pid=None, pid_start=None)
                return 1
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

    def _check_model(self) -> None:
        """The model still answers with the digest the pool was started on: one ``stat`` when a single file
        still has the identity the catalog verified, else the catalog's own check (a changed file is
        re-hashed; an API pool's file must still be under its roots, reached without a link)."""
        s = self.state
        if s.model_fingerprint is not None and _unchanged(s.model_path, s.model_fingerprint, s.model_path_is_link):
            return
        try:
            resolved = self.host.ensure_present(s.model_id)
        except ProvisionerError as exc:
            raise ModelChanged(f"pool {s.pool_id}: {s.model_id} no longer verifies: {redact_text(str(exc))}") from None
        if resolved.digest != s.digest or str(resolved.local_path) != s.model_path:
            raise ModelChanged(
                f"pool {s.pool_id}: {s.model_id} changed since the pool started (served {s.digest}, now "
                f"{resolved.digest} at {resolved.local_path}); not served: start it again with "
                f"`model-provisioner up {s.model_id} --pool {s.pool_id}` once you trust the new bytes"
            )
        entry = self.host.catalog.get(s.model_id) if s.model_fingerprint is not None else None
        if entry is not None and entry.fingerprint is not None:  # the same bytes, verified again: their identity
            self.state = replace(s, model_fingerprint=list(entry.fingerprint))

    def _start(self) -> None:
        s = self.state
        log_path = Path(s.log_path)
        check_before_exec(BinaryIdentity(s.binary, s.binary_fingerprint, s.binary_sha256))
        self.proc = spawn(s.argv, log_path, self.env)
        # our pid and the engine's: ``down`` can prove and stop both from now on (``up`` lets go of the pool)
        self._write(
            state="starting" if s.state != "restarting" else "restarting",
            pid=self.proc.pid,
            pid_start=start_time(self.proc.pid),
            started_ms=now_ms(),
            error=None,
            error_code=None,
        )
        failpoints.failpoint("supervisor.recorded")
        if s.lease_id is None:  # taken while the first engine loads; ``up`` holds its own lease until then
            self.run.write_pid_file(s.pool_id, os.getpid())
            holder = f"engine pool {s.pool_id}"
            lease = acquire_lease(self.host, s.model_id, holder=holder, pid=os.getpid())
            self.state = replace(self.state, lease_id=lease.lease_id)  # written with the next state
        subject = f"{s.engine} (pool {s.pool_id})"
        kind = kind_of(s.engine)
        try:
            wait_ready(self.proc, lambda: kind.is_ready(s), s.ready_timeout_s, log_path, subject, self.stopping.is_set)
        except EngineFailed as exc:
            failures = kind.load_failures(log_path)
            if failures:
                raise EngineFailed(f"{subject}: models failed to load: {failures}") from exc
            raise
        kind.after_ready(s, subject)
        self._write(state="ready", ready_ms=now_ms())
        if self.state.restarts:  # the first start's handoff is written by ``up`` itself
            update_handoff(self.state, {"pid": self.state.pid, "state": "ready"})

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


def _unchanged(path: str, fingerprint: list[int], was_link: bool) -> bool:
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        st = os.stat(path)
    except OSError:
        return False
    now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return is_link == was_link and list(now) == fingerprint


def supervise(host: EngineHost, launch: PoolState, engine_env: Mapping[str, str]) -> int:
    """The supervisor process's main: returns its exit status."""
    return Supervisor(host, launch, engine_env).serve()
