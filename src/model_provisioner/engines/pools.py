"""``up``, ``down`` and the list of pools: an engine on a verified model, one pool at a time.

``up`` ensures the model first (every verification rule applies: nothing unverified reaches an engine),
resolves the engine binary (or builds it from source), picks the port (a taken port or port 0 falls back to
a free one, and says so), writes the pool's state and leaves a detached supervisor that checks the model
again, starts the engine and waits until it is ready; ``up`` returns when it is, or fails with the engine's
own last words and nothing left running, also when it is interrupted (docs/engines.md).

One pool, one operation at a time: ``up`` holds the pool's operation lock until its supervisor has recorded
itself, ``down`` holds it while it stops the pool, so a second ``up`` of a live pool is refused and a
``down`` during a start stops it for good. Only processes proven to be the pool's are signalled
(``ownership.py``). Secret flag values and the engine's own variables never reach the state file: they go
to the supervisor in memory (fork) or through its stdin (a fresh interpreter).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from model_provisioner.config.engine_run import EngineRun
from model_provisioner.core import failpoints
from model_provisioner.core.errors import (
    EngineFailed,
    EngineNotReady,
    InvalidInput,
    NotFound,
    PolicyDenied,
    ProvisionerError,
)
from model_provisioner.core.processes import free_port, is_alive, port_in_use, stop
from model_provisioner.core.units import now_ms
from model_provisioner.engines.dispatch import kind_of
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.launch import Launched, start_supervisor
from model_provisioner.engines.ownership import (
    engine_is_ours,
    new_run_token,
    op_lock,
    supervisor_is_ours,
)
from model_provisioner.engines.process import log_tail, open_log
from model_provisioner.engines.state import (
    ENDED,
    LIVE,
    PoolPhase,
    PoolState,
    RunDir,
    check_engine_kind,
    check_pool_id,
    truthful,
)
from model_provisioner.ops.leases import acquire_lease
from model_provisioner.storage.catalog import Lease
from model_provisioner.storage.locks import FileLock, make_locks_dir
from model_provisioner.verify.results import ResolvedModel

log = logging.getLogger("model_provisioner")
#: how long ``up``/``down`` wait for another command on the same pool to let go of it
POOL_LOCK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class UpRequest:
    ref: str
    digest: str | None = None
    strict: bool | None = None
    run: EngineRun = field(default_factory=EngineRun)
    #: where the caller writes the engine handoff (``down`` marks it stopped)
    handoff: str | None = None
    #: the supervisor runs under the HTTP API's settings (files confined to ``api_file_roots``…)
    api: bool = False


@dataclass(frozen=True)
class Prepared:
    state: PoolState
    #: what the engine gets beyond the allow-listed environment (never written to a file)
    engine_env: dict[str, str]


def run_dir(host: EngineHost) -> RunDir:
    return RunDir(host.store.root / "run")


def up(
    host: EngineHost, request: UpRequest, host_factory: Callable[[], EngineHost] | None = None
) -> tuple[PoolState, ResolvedModel]:
    """``host_factory`` makes the supervisor's own provisioner: with it, the supervisor is forked from this
    process (no second interpreter start: about 100 ms sooner ready) when this process runs one thread."""
    run = request.run
    pool = check_pool_id(run.pool)
    check_engine_kind(run.kind)
    rundir = run_dir(host)
    lock = op_lock(host.store.locks_dir, pool)
    lock.acquire(POOL_LOCK_TIMEOUT_S)
    launched: Launched | None = None
    state: PoolState | None = None
    lease: Lease | None = None
    try:
        current = rundir.recorded(pool)
        if current is not None and truthful(current).state in LIVE:
            raise InvalidInput(
                f"pool {pool!r} already runs {current.model_id} at {current.url}; stop it first "
                f"(model-provisioner down --pool {pool}) or choose another --pool"
            )
        resolved, lease = _ensure_leased(host, request, pool)
        prepared = _prepare(host, run, resolved, rundir)
        _write_within_pool_limit(host, rundir, replace(prepared.state, handoff=request.handoff))
        state = replace(prepared.state, handoff=request.handoff)  # recorded: from here on, cleaned up on failure
        launched = start_supervisor(host, state, rundir, prepared.engine_env, host_factory, lock, request.api)
        return _wait_for_supervisor(rundir, pool, state.ready_timeout_s + 15, launched, lock), resolved
    except BaseException as exc:
        if state is not None:
            _cleanup(host, rundir, state, launched, interrupted=not isinstance(exc, Exception))
        raise
    finally:
        lock.release()
        if lease is not None:  # by now (ready, or nothing runs) the supervisor holds its own lease, if any
            host.catalog.remove_lease(lease.lease_id)


def _ensure_leased(host: EngineHost, request: UpRequest, pool: str) -> tuple[ResolvedModel, Lease]:
    """Ensure, then lease at once: an ``rm`` between the two makes us ensure again (never a failed ``up``).
    ``up`` holds this lease until its supervisor holds its own."""
    for attempt in range(3):
        resolved = host.ensure_present(request.ref, request.digest, strict=request.strict)
        try:
            failpoints.failpoint("up.ensured")
            return resolved, acquire_lease(host, resolved.id, holder=f"engine pool {pool} (starting)")
        except NotFound:
            if attempt == 2:
                raise
            log.info("%s was removed while pool %s started; ensuring it again", resolved.id, pool)
    raise AssertionError("unreachable")


def _write_within_pool_limit(host: EngineHost, rundir: RunDir, state: PoolState) -> None:
    """Counting the live pools and recording this one is one step (``locks/pools.lock``)."""
    limit = host.settings.engines.max_pools
    make_locks_dir(host.store.locks_dir)
    counting = FileLock(host.store.locks_dir / "pools.lock", "the count of engine pools")
    counting.acquire(POOL_LOCK_TIMEOUT_S)
    try:
        live = [p.pool_id for p in rundir.pools() if p.state in LIVE and p.pool_id != state.pool_id]
        if len(live) >= limit:
            raise PolicyDenied(
                f"pool {state.pool_id}: {len(live)} engine pools already run ({', '.join(live[:8])}), the most "
                f"engines.max_pools allows ({limit}); stop one (model-provisioner down --pool {live[0]}) or raise "
                "engines.max_pools in the settings"
            )
        rundir.write(state)
    finally:
        counting.release()


def _prepare(host: EngineHost, run: EngineRun, resolved: ResolvedModel, rundir: RunDir) -> Prepared:
    kind = kind_of(run.kind)
    port = _choose_port(run.host, run.port)
    launch = kind.launch(host, run, resolved, port, rundir.root.parent)
    pool = check_pool_id(run.pool)
    verified = _verified_fingerprint(host, resolved)
    rundir.make()
    os.close(open_log(rundir.log_path(pool)))  # a planted link or FIFO is refused here, before anything runs
    state = PoolState(
        pool_id=pool,
        engine=kind.name,
        model_id=resolved.id,
        model_path=str(resolved.local_path),
        digest=resolved.digest,
        state="starting",
        host=run.host,
        port=port,
        url=f"http://{run.host if ':' not in run.host else f'[{run.host}]'}:{port}",
        argv=launch.argv,
        flags=launch.flags,
        log_path=str(rundir.log_path(pool)),
        replica_id=run.replica,
        engine_version=launch.version,
        provisioning_mode=run.provisioning_mode,
        binary=launch.identity.path,
        binary_sha256=launch.identity.sha256,
        binary_fingerprint=launch.identity.fingerprint,
        env_names=sorted(launch.env),
        started_ms=now_ms(),
        ready_timeout_s=run.ready_timeout_s or launch.ready_timeout_s,
        models=launch.models,
        requested_port=run.port,
        run_token=new_run_token(),
        model_fingerprint=verified,
        model_path_is_link=os.path.islink(resolved.local_path),
    )
    return Prepared(state, launch.env)


def _verified_fingerprint(host: EngineHost, resolved: ResolvedModel) -> list[int] | None:
    """The fingerprint the catalog recorded when it verified a single-file model (not one taken now: a file
    changed since would pass for verified); None for trees and file sets, which the catalog checks."""
    entry = host.catalog.get(resolved.id)
    if entry is None or entry.fingerprint is None or "local_tree" in entry.metadata:
        return None
    if str(entry.local_path) != str(resolved.local_path) or entry.fingerprint[2:3] != (resolved.size_bytes,):
        return None
    return list(entry.fingerprint)


def _choose_port(host: str, port: int) -> int:
    if port and not port_in_use(host, port):
        return port
    chosen = free_port(host)
    if port:
        log.warning("port %d on %s is in use; the engine listens on %d instead", port, host, chosen)
    return chosen


def _wait_for_supervisor(rundir: RunDir, pool: str, timeout_s: float, launched: Launched, lock: FileLock) -> PoolState:
    """Until the pool is ready. The operation lock is let go once the supervisor has recorded itself: from
    then on ``down`` can prove it and stop it, also while the engine is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = rundir.recorded(pool)
        if state is None:
            raise EngineFailed(f"pool {pool}: its state file went away while starting")
        if state.supervisor_pid == launched.pid:
            lock.release()
        if state.state == "ready":
            return state
        if state.state in ENDED:
            if state.state == "stopped":
                raise EngineFailed(f"pool {pool}: stopped (model-provisioner down) while starting")
            error_type = EngineNotReady if state.error_code == "engine_not_ready" else EngineFailed
            raise error_type(state.error or f"pool {pool}: the engine stopped while starting")
        if not is_alive(launched.pid, launched.start):
            tail = log_tail(rundir.supervisor_log_path(pool))
            raise EngineFailed(f"pool {pool}: the supervisor exited before the engine was ready; last lines: {tail}")
        if time.monotonic() > deadline:
            raise EngineNotReady(f"pool {pool}: not ready within {timeout_s:.0f}s; stopped")
        time.sleep(0.003)


def _cleanup(
    host: EngineHost, rundir: RunDir, state: PoolState, launched: Launched | None, *, interrupted: bool
) -> None:
    """Nothing of a failed or interrupted ``up`` stays running: the supervisor we started (or, when we were
    interrupted before we knew its pid, the one that recorded itself under our run token and is proven ours),
    then its engine."""
    if launched is not None:
        stop(launched.pid, launched.start, grace_s=8)
    final = rundir.recorded(state.pool_id) or state
    if (
        launched is None
        and final.run_token == state.run_token
        and final.supervisor_pid is not None
        and supervisor_is_ours(final, host.store.locks_dir)
    ):
        stop(final.supervisor_pid, final.supervisor_start, grace_s=8)
        final = rundir.recorded(state.pool_id) or final
    if final.run_token == state.run_token:
        if final.pid is not None and engine_is_ours(final):
            stop(final.pid, final.pid_start, grace_s=5)
        last = rundir.recorded(state.pool_id) or final
        if last.run_token == state.run_token and not (
            is_alive(last.supervisor_pid, last.supervisor_start) or is_alive(last.pid, last.pid_start)
        ):
            rundir.forget(state.pool_id)  # a failed up leaves no pool behind (docs/engines.md, "Pools")
        elif final.state not in ENDED or interrupted:
            ended: PoolPhase = "stopped" if interrupted else "crashed"
            rundir.write(replace(final, state=ended, stopped_ms=now_ms(), pid=None, pid_start=None))


def down(host: EngineHost, pool: str, *, forget: bool = False) -> PoolState:
    """SIGTERM to the supervisor (it stops the engine: SIGTERM, 5 s, SIGKILL); an engine left without its
    supervisor is stopped directly. Only processes proven to be the pool's are signalled; a pid the state
    file names that is not is left alone (a warning). Returns when the port is free."""
    rundir = run_dir(host)
    check_pool_id(pool)
    lock = op_lock(host.store.locks_dir, pool)
    lock.acquire(POOL_LOCK_TIMEOUT_S)
    try:
        state = rundir.read(pool)
        signalled = False
        if state.supervisor_pid is not None and is_alive(state.supervisor_pid, state.supervisor_start):
            if supervisor_is_ours(state, host.store.locks_dir):
                stop(state.supervisor_pid, state.supervisor_start, grace_s=7)
                signalled = True
            else:
                _not_ours(pool, "supervisor", state.supervisor_pid)
        state = rundir.recorded(pool) or state
        if state.pid is not None and is_alive(state.pid, state.pid_start):
            if not engine_is_ours(state):
                _not_ours(pool, "engine", state.pid)
            elif stop(state.pid, state.pid_start, grace_s=5):
                signalled = True
            else:
                raise ProvisionerError(f"pool {pool}: engine pid {state.pid} did not stop; kill it by hand")
        deadline = time.monotonic() + 2
        while signalled and port_in_use(state.host, state.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        ended: PoolPhase = state.state if state.state in ("crashed", "failed") and not signalled else "stopped"
        stopped = replace(state, state=ended, stopped_ms=state.stopped_ms or now_ms(), pid=None, pid_start=None)
        if forget:
            rundir.forget(pool)  # ``run``'s own pool: nothing to show once it is stopped
        else:
            rundir.write(stopped)
        return stopped
    finally:
        lock.release()


def _not_ours(pool: str, what: str, pid: int) -> None:
    log.warning(
        "pool %s: pid %d named as its %s is not a process this pool started (another user's, or a planted state "
        "file); it was not signalled",
        pool,
        pid,
        what,
    )


def pools(host: EngineHost) -> list[PoolState]:
    return run_dir(host).pools()
