"""Starting a pool's supervisor: forked from ``up`` (no second interpreter start: about 100 ms sooner ready)
when ``up`` runs one thread, else ``engine-supervise`` in a fresh interpreter. Either way the supervisor gets
the pool's state and the engine's variables from ``up`` (memory, or its stdin), never from a file in the
cache, and ``up`` knows its pid and start time (``Launched``) to stop it if the start fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from model_provisioner.core import failpoints
from model_provisioner.core.errors import EngineFailed
from model_provisioner.core.processes import start_time
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.process import open_log
from model_provisioner.engines.state import PoolState, RunDir
from model_provisioner.engines.supervisor import supervise
from model_provisioner.storage.locks import FileLock


@dataclass(frozen=True)
class Launched:
    """The supervisor ``up`` started (its pid and kernel start time): ours by construction."""

    pid: int
    start: str | None


def start_supervisor(
    host: EngineHost,
    state: PoolState,
    rundir: RunDir,
    engine_env: Mapping[str, str],
    host_factory: Callable[[], EngineHost] | None,
    lock: FileLock,
    api: bool,
) -> Launched:
    """The supervisor gets the state and the engine's variables from us (memory, or its stdin), never from a
    file in the cache."""
    pool = state.pool_id
    rundir.make()
    out = open_log(rundir.supervisor_log_path(pool))
    try:
        if host_factory is not None and threading.active_count() == 1:
            launched = fork_supervisor(state, out, host_factory, engine_env, lock)
        else:
            cmd = [sys.executable, "-m", "model_provisioner", "--cache-dir", str(host.store.root), "engine-supervise"]
            cmd += ["--api", pool] if api else [pool]
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"state": asdict(state), "engine_env": dict(engine_env)}).encode())
            proc.stdin.close()
            launched = Launched(proc.pid, start_time(proc.pid))
        failpoints.failpoint("up.supervisor_started")  # it runs; the caller holds no record of it yet
        return launched
    finally:
        os.close(out)


def fork_supervisor(
    state: PoolState, out: int, host_factory: Callable[[], EngineHost], engine_env: Mapping[str, str], lock: FileLock
) -> Launched:
    """Double fork: the supervisor has its own session, no terminal, and init as its parent (no zombie). The
    middle child tells us the supervisor's pid through a pipe."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            reported = pipe.read(32)
        os.waitpid(child, 0)  # the first child exits at once
        if not reported.strip().isdigit():
            raise EngineFailed(f"pool {state.pool_id}: the supervisor could not be started")
        pid = int(reported)
        return Launched(pid, start_time(pid))
    code = 1
    try:
        os.close(read_end)
        os.setsid()
        grandchild = os.fork()
        if grandchild:
            os.write(write_end, str(grandchild).encode())
            os._exit(0)
        os.close(write_end)
        lock.close_inherited()  # the pool's operation lock stays ``up``'s alone
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = supervise(host_factory(), state, engine_env)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)
