"""Run state of engine pools, under ``<cache>/run/``: ``<pool>.json`` (what runs, where, in which state),
``<pool>.pid`` (the supervisor) and ``<engine>-<pool>.log`` (the engine's output). A pid is trusted only
with its start time, so a supervisor or engine killed with SIGKILL never leaves a state that lies: ``read``
reports what is really running (docs/engines.md)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import InvalidInput, NotFound, UnsafeCachePath
from model_provisioner.core.processes import is_alive
from model_provisioner.storage.safefs import read_small, write_atomic

STATES = ("starting", "ready", "restarting", "crashed", "stopped")
_POOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_pool_id(pool: str) -> str:
    if not _POOL_RE.fullmatch(pool):
        raise InvalidInput(f"pool id {pool[:80]!r}: use 1-64 letters, digits, '.', '_' or '-' (e.g. default, chat-1)")
    return pool


@dataclass(frozen=True)
class PoolState:
    pool_id: str
    engine: str
    model_id: str
    model_path: str
    digest: str
    state: str
    host: str
    port: int
    url: str
    argv: list[str]
    flags: list[str]
    log_path: str
    replica_id: str = "0"
    engine_version: str | None = None
    provisioning_mode: str = "binary"
    binary: str = ""
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    pid_start: str | None = None
    supervisor_pid: int | None = None
    supervisor_start: str | None = None
    restarts: int = 0
    started_ms: int = 0
    ready_ms: int | None = None
    stopped_ms: int | None = None
    error: str | None = None
    #: the error's code: engine_failed (exit 9) or engine_not_ready (exit 8)
    error_code: str | None = None
    handoff: str | None = None
    lease_id: str | None = None
    ready_timeout_s: float = 60.0
    #: the port asked for (0: any); ``port`` differs when it was taken
    requested_port: int = 0
    #: the models a Triton repository serves (their names)
    models: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["uptime_s"] = round(time.time() - self.ready_ms / 1000, 1) if self.ready_ms and self.state == "ready" else 0
        return out


class RunDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def state_path(self, pool: str) -> Path:
        return self.root / f"{check_pool_id(pool)}.json"

    def log_path(self, engine: str, pool: str) -> Path:
        return self.root / f"{engine}-{check_pool_id(pool)}.log"

    def write(self, state: PoolState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_path(state.pool_id), json.dumps(asdict(state), sort_keys=True).encode())
        if state.supervisor_pid is not None:
            write_atomic(self.root / f"{state.pool_id}.pid", f"{state.supervisor_pid}\n".encode())

    def recorded(self, pool: str) -> PoolState | None:
        """The state as last written (what ``read`` corrects with the processes' truth)."""
        try:
            raw = json.loads(read_small(self.state_path(pool), 1 << 20))
        except (FileNotFoundError, ValueError, UnsafeCachePath):
            return None
        try:
            return PoolState(**raw)
        except TypeError:
            return None

    def read(self, pool: str) -> PoolState:
        """The pool's state as it really is: a pool whose supervisor died is ``crashed`` (unless it was stopped)."""
        state = self.recorded(pool)
        if state is None:
            raise NotFound(f"no engine pool {pool!r}; see `model-provisioner engines`")
        return truthful(state)

    def pools(self) -> list[PoolState]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.json")):
            state = self.recorded(path.stem)
            if state is not None:
                out.append(truthful(state))
        return out


def truthful(state: PoolState) -> PoolState:
    if state.state in ("stopped", "crashed"):
        return state
    if not is_alive(state.supervisor_pid, state.supervisor_start):
        engine_alive = is_alive(state.pid, state.pid_start)
        why = "its supervisor is gone" + ("; the engine still runs unsupervised" if engine_alive else "")
        return replace(state, state="crashed", error=state.error or why)
    return state
