"""Which processes and locks belong to a pool (docs/engines.md, docs/reliability.md).

``run/<pool>.json`` is group-writable in a shared cache: its pids prove only that some process is alive, not
that it is ours. A process is signalled only when it is proven to be the pool's:
- its engine: our uid, the recorded start time, and ``MODEL_PROVISIONER_POOL_RUN=<pool>:<run token>`` in the
  environment it was started with (/proc/PID/environ, which only its own user and root can read);
- its supervisor: our uid, the recorded start time, and it holds the pool's life lock open
  (``locks/pool-<pool>.life.lock``, which every supervisor flocks for as long as it runs).

Every ``up``, ``down`` and restart decision of one pool runs under its operation lock
(``locks/pool-<pool>.op.lock``): two commands on one pool never interleave.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from model_provisioner.core.processes import environ_has, holds_open, is_alive, process_uid
from model_provisioner.engines.state import PoolState, check_pool_id
from model_provisioner.storage.locks import FileLock, make_locks_dir

RUN_VAR = "MODEL_PROVISIONER_POOL_RUN"


def new_run_token() -> str:
    return os.urandom(16).hex()  # the secrets module's source, without its import (~1 ms of every up)


def run_mark(state: PoolState) -> dict[str, str]:
    """The variable that marks the engine of this run of this pool."""
    return {RUN_VAR: f"{state.pool_id}:{state.run_token}"}


def op_lock(locks_dir: Path, pool: str) -> FileLock:
    make_locks_dir(locks_dir)
    return FileLock(locks_dir / f"pool-{check_pool_id(pool)}.op.lock", f"the engine pool {pool} (up/down running)")


def life_lock(locks_dir: Path, pool: str) -> FileLock:
    make_locks_dir(locks_dir)
    return FileLock(locks_dir / f"pool-{check_pool_id(pool)}.life.lock", f"the supervisor of engine pool {pool}")


def _ours(pid: int | None, started: str | None) -> bool:
    return pid is not None and is_alive(pid, started) and process_uid(pid) == os.getuid()


def engine_is_ours(state: PoolState) -> bool:
    if not _ours(state.pid, state.pid_start) or not state.run_token:
        return False
    assert state.pid is not None
    return environ_has(state.pid, f"{RUN_VAR}={state.pool_id}:{state.run_token}")


def supervisor_is_ours(state: PoolState, locks_dir: Path) -> bool:
    if not _ours(state.supervisor_pid, state.supervisor_start):
        return False
    assert state.supervisor_pid is not None
    try:
        st = os.lstat(locks_dir / f"pool-{check_pool_id(state.pool_id)}.life.lock")
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and holds_open(state.supervisor_pid, st.st_dev, st.st_ino)
