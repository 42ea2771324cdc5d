"""``up``, ``down`` and the list of pools: an engine on a verified model, one pool at a time.

``up`` ensures the model first (every verification rule applies: nothing unverified reaches an engine),
resolves the engine binary (or builds it from source), picks the port (a taken port or port 0 falls back to
a free one, and says so), writes the pool's state and leaves a detached supervisor that starts the engine
and waits until it is ready; ``up`` returns when it is, or fails with the engine's own last words and
nothing left running (docs/engines.md).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from model_provisioner.config.engine_run import EngineRun
from model_provisioner.core.errors import EngineFailed, EngineNotReady, InvalidInput, ProvisionerError
from model_provisioner.core.processes import free_port, is_alive, port_in_use, stop
from model_provisioner.core.units import now_ms
from model_provisioner.engines import llamacpp, triton
from model_provisioner.engines.build import SourceSpec, built_binary
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.process import check_binary, log_tail
from model_provisioner.engines.state import PoolState, RunDir, check_pool_id
from model_provisioner.engines.supervisor import supervise
from model_provisioner.verify.results import ResolvedModel

log = logging.getLogger("model_provisioner")
LIVE = ("starting", "ready", "restarting")


@dataclass(frozen=True)
class UpRequest:
    ref: str
    digest: str | None = None
    strict: bool | None = None
    run: EngineRun = field(default_factory=EngineRun)
    #: where the caller writes the engine handoff (``down`` marks it stopped)
    handoff: str | None = None


def run_dir(host: EngineHost) -> RunDir:
    return RunDir(host.store.root / "run")


def up(
    host: EngineHost, request: UpRequest, host_factory: Callable[[], EngineHost] | None = None
) -> tuple[PoolState, ResolvedModel]:
    """``host_factory`` makes the supervisor's own provisioner: with it, the supervisor is forked from this
    process (no second interpreter start: about 100 ms sooner ready) when this process runs one thread."""
    run = request.run
    pool = check_pool_id(run.pool)
    rundir = run_dir(host)
    current = rundir.recorded(pool)
    if current is not None and rundir.read(pool).state in LIVE:
        raise InvalidInput(
            f"pool {pool!r} already runs {current.model_id} at {current.url}; stop it first "
            f"(model-provisioner down --pool {pool}) or choose another --pool"
        )
    resolved = host.ensure_present(request.ref, request.digest, request.strict)
    state = replace(_prepare(host, run, resolved, rundir), handoff=request.handoff)
    rundir.write(state)
    _start_supervisor(host, pool, rundir, host_factory)
    return _wait_for_supervisor(rundir, pool, state.ready_timeout_s + 15), resolved


def _prepare(host: EngineHost, run: EngineRun, resolved: ResolvedModel, rundir: RunDir) -> PoolState:
    settings = host.settings.engines
    port = _choose_port(run.host, run.port)
    if run.kind == "llamacpp":
        if resolved.format != "gguf":
            raise InvalidInput(f"{resolved.id} is {resolved.format}, not GGUF: llama-server runs GGUF models")
        binary = _llamacpp_binary(host, run)
        flags = llamacpp.server_flags(run.flags, _int(resolved.metadata.get("ctx_max")), settings.llamacpp)
        argv = llamacpp.argv(binary, str(resolved.local_path), run.host, port, flags)
        engine_version, timeout, models, env = (
            llamacpp.version(binary, rundir.root.parent / "engines" / "versions.json"),
            settings.llamacpp.ready_timeout_s,
            [],
            run.env,
        )
    else:
        if resolved.format != "triton":
            raise InvalidInput(f"{resolved.id} is {resolved.format}, not a Triton model repository")
        env = {**settings.triton.env, **run.env}
        binary = check_binary(run.binary or settings.triton.binary or "tritonserver", "tritonserver", triton.HOW_TO_GET)
        flags = list(run.flags)
        argv = triton.argv(binary, str(resolved.local_path), run.host, port, flags)
        engine_version, timeout = triton.version(binary, env), settings.triton.ready_timeout_s
        names = resolved.metadata.get("model_names")
        models = sorted(str(n) for n in names) if isinstance(names, list) else []
    pool = check_pool_id(run.pool)
    return PoolState(
        pool_id=pool,
        engine=run.kind,
        model_id=resolved.id,
        model_path=str(resolved.local_path),
        digest=resolved.digest,
        state="starting",
        host=run.host,
        port=port,
        url=f"http://{run.host if ':' not in run.host else f'[{run.host}]'}:{port}",
        argv=argv,
        flags=flags,
        log_path=str(rundir.log_path(run.kind, pool)),
        replica_id=run.replica,
        engine_version=engine_version,
        provisioning_mode=run.provisioning_mode,
        binary=binary,
        env=env,
        started_ms=now_ms(),
        ready_timeout_s=run.ready_timeout_s or timeout,
        models=models,
        requested_port=run.port,
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _llamacpp_binary(host: EngineHost, run: EngineRun) -> str:
    settings = host.settings.engines
    if run.provisioning_mode == "source":
        assert run.source is not None
        spec = SourceSpec(run.source, run.source_digest, run.source_subdir)
        built = built_binary(
            host, spec, jobs=settings.llamacpp.build_jobs, allow_package_installs=settings.allow_package_installs
        )
        return str(built)
    return check_binary(run.binary or settings.llamacpp.binary or "llama-server", "llama-server", llamacpp.HOW_TO_GET)


def _choose_port(host: str, port: int) -> int:
    if port and not port_in_use(host, port):
        return port
    chosen = free_port(host)
    if port:
        log.warning("port %d on %s is in use; the engine listens on %d instead", port, host, chosen)
    return chosen


def _start_supervisor(
    host: EngineHost, pool: str, rundir: RunDir, host_factory: Callable[[], EngineHost] | None
) -> None:
    rundir.root.mkdir(parents=True, exist_ok=True)
    log_path = rundir.root / f"{pool}.supervisor.log"
    if host_factory is not None and threading.active_count() == 1:
        _fork_supervisor(pool, log_path, host_factory)
        return
    cmd = [sys.executable, "-m", "model_provisioner", "--cache-dir", str(host.store.root), "engine-supervise", pool]
    with open(log_path, "ab") as out:
        subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True
        )


def _fork_supervisor(pool: str, log_path: Path, host_factory: Callable[[], EngineHost]) -> None:
    """Double fork: the supervisor has its own session, no terminal, and init as its parent (no zombie)."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)  # the first child exits at once
        return
    code = 1
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = supervise(host_factory(), pool)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _wait_for_supervisor(rundir: RunDir, pool: str, timeout_s: float) -> PoolState:
    deadline = time.monotonic() + timeout_s
    spawned_at = time.monotonic()
    while True:
        state = rundir.recorded(pool)
        assert state is not None
        if state.state == "ready":
            return state
        if state.state in ("crashed", "stopped"):
            _cleanup(rundir, state)
            error_type = EngineNotReady if state.error_code == "engine_not_ready" else EngineFailed
            raise error_type(state.error or f"pool {pool}: the engine stopped while starting")
        supervisor_gone = state.supervisor_pid is not None and not is_alive(
            state.supervisor_pid, state.supervisor_start
        )
        if supervisor_gone or (state.supervisor_pid is None and time.monotonic() - spawned_at > 30):
            _cleanup(rundir, state)
            tail = log_tail(rundir.root / f"{pool}.supervisor.log")
            raise EngineFailed(f"pool {pool}: the supervisor exited before the engine was ready; last lines: {tail}")
        if time.monotonic() > deadline:
            _cleanup(rundir, state)
            raise EngineNotReady(f"pool {pool}: not ready within {timeout_s:.0f}s; stopped")
        time.sleep(0.003)


def _cleanup(rundir: RunDir, state: PoolState) -> None:
    """Nothing of a failed ``up`` stays running."""
    if state.supervisor_pid is not None:
        stop(state.supervisor_pid, state.supervisor_start, grace_s=8)
    if state.pid is not None:
        stop(state.pid, state.pid_start, grace_s=5)
    final = rundir.recorded(state.pool_id) or state
    if final.state not in ("crashed", "stopped"):
        rundir.write(replace(final, state="crashed", stopped_ms=now_ms()))


def down(host: EngineHost, pool: str) -> PoolState:
    """SIGTERM to the supervisor (it stops the engine: SIGTERM, 5 s, SIGKILL); an engine left without its
    supervisor is stopped directly. Returns when the port is free."""
    rundir = run_dir(host)
    state = rundir.read(pool)
    if state.supervisor_pid is not None:
        stop(state.supervisor_pid, state.supervisor_start, grace_s=7)
    state = rundir.recorded(pool) or state
    if state.pid is not None and not stop(state.pid, state.pid_start, grace_s=5):
        raise ProvisionerError(f"pool {pool}: engine pid {state.pid} did not stop; kill it by hand")
    deadline = time.monotonic() + 2
    while port_in_use(state.host, state.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = replace(state, state="stopped", stopped_ms=state.stopped_ms or now_ms(), pid=None, pid_start=None)
    rundir.write(stopped)
    return stopped


def pools(host: EngineHost) -> list[PoolState]:
    return run_dir(host).pools()
