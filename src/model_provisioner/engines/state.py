"""Run state of engine pools, under ``<cache>/run/``: ``<pool>.json`` (what runs, where, in which state),
``<pool>.pid`` (the supervisor), ``<pool>.engine.log`` (the engine's output) and ``<pool>.supervisor.log``.
The suffixes differ in their last component, so no two pools' files ever share a name.

A pid is trusted only with its start time, so a supervisor or engine killed with SIGKILL never leaves a state
that lies: ``read`` reports what is really running. In a shared cache these files are group-writable, so a
pid read from them is never signalled on its word alone (``engines/ownership.py``). Every file here is opened
like every other cache file: ``O_NOFOLLOW``, checked after open (docs/engines.md, docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from model_provisioner.config.engines import ENGINE_KINDS, EngineKind
from model_provisioner.core.errors import InvalidInput, NotFound, UnsafeCachePath
from model_provisioner.core.processes import is_alive
from model_provisioner.storage.safefs import check_plain_dir, read_small, write_atomic

#: a pool's life: ``failed`` is a pool stopped because its model no longer verifies (never served)
PoolPhase = Literal["starting", "ready", "restarting", "crashed", "stopped", "failed"]
STATES: tuple[PoolPhase, ...] = get_args(PoolPhase)
LIVE: tuple[PoolPhase, ...] = ("starting", "ready", "restarting")
ENDED: tuple[PoolPhase, ...] = ("crashed", "stopped", "failed")
log = logging.getLogger("model_provisioner")
_POOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_pool_id(pool: str) -> str:
    if not isinstance(pool, str) or not _POOL_RE.fullmatch(pool):
        raise InvalidInput(
            f"pool id {str(pool)[:80]!r}: use 1-64 letters, digits, '.', '_' or '-' (e.g. default, chat-1)"
        )
    return pool


def check_engine_kind(kind: str) -> EngineKind:
    for known in ENGINE_KINDS:
        if kind == known:
            return known
    raise InvalidInput(f"engine {str(kind)[:80]!r}: expected one of {', '.join(ENGINE_KINDS)}")


@dataclass(frozen=True)
class PoolState:
    pool_id: str
    engine: EngineKind
    model_id: str
    model_path: str
    digest: str
    state: PoolPhase
    host: str
    port: int
    url: str
    #: the engine's command line; secret flag values never appear here (they reach the engine by environment)
    argv: list[str]
    #: the flags as shown (``--api-key ***``)
    flags: list[str]
    log_path: str
    replica_id: str = "0"
    engine_version: str | None = None
    provisioning_mode: str = "binary"
    binary: str = ""
    #: a binary we built: the bytes it must have; any binary: its stat fingerprint when it was trusted
    binary_sha256: str | None = None
    binary_fingerprint: str = ""
    #: the names of the variables the engine gets beyond the allow-list; their values are never written
    env_names: list[str] = field(default_factory=list)
    pid: int | None = None
    pid_start: str | None = None
    supervisor_pid: int | None = None
    supervisor_start: str | None = None
    restarts: int = 0
    started_ms: int = 0
    ready_ms: int | None = None
    stopped_ms: int | None = None
    error: str | None = None
    #: the error's code: engine_failed (exit 9), engine_not_ready (exit 8), digest_mismatch…
    error_code: str | None = None
    handoff: str | None = None
    lease_id: str | None = None
    ready_timeout_s: float = 60.0
    #: the port asked for (0: any); ``port`` differs when it was taken
    requested_port: int = 0
    #: the models a Triton repository serves (their names)
    models: list[str] = field(default_factory=list)
    #: this run's random mark, put in the engine's environment: ``down`` signals only a process that has it
    run_token: str = ""
    #: the catalog's fingerprint of a single-file model when it was verified (device, inode, size, mtime,
    #: ctime), and whether its path was a link: a start whose ``stat`` still says so needs no catalog
    model_fingerprint: list[int] | None = None
    model_path_is_link: bool = False

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("run_token")
        out["uptime_s"] = round(time.time() - self.ready_ms / 1000, 1) if self.ready_ms and self.state == "ready" else 0
        return out


def state_from_json(raw: object) -> PoolState | None:
    """A pool state from its JSON form, or None when it is not one."""
    if not isinstance(raw, dict) or raw.get("state") not in STATES or raw.get("engine") not in ENGINE_KINDS:
        return None
    try:
        return PoolState(**raw)
    except TypeError:
        return None


class RunDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def state_path(self, pool: str) -> Path:
        return self.root / f"{check_pool_id(pool)}.json"

    def log_path(self, pool: str) -> Path:
        return self.root / f"{check_pool_id(pool)}.engine.log"

    def supervisor_log_path(self, pool: str) -> Path:
        return self.root / f"{check_pool_id(pool)}.supervisor.log"

    def make(self) -> None:
        check_plain_dir(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        check_plain_dir(self.root)

    def write(self, state: PoolState) -> None:
        self.make()
        write_atomic(self.state_path(state.pool_id), json.dumps(asdict(state), sort_keys=True).encode())

    def forget(self, pool: str) -> None:
        """Drop a pool whose processes are gone: its state and pid file (its logs stay, for the error)."""
        for path in (self.state_path(pool), self.root / f"{check_pool_id(pool)}.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a planted link is removed, never followed

    def write_pid_file(self, pool: str, pid: int) -> None:
        """``<pool>.pid``: the supervisor, for operators (we never trust it: ``ownership.py``)."""
        write_atomic(self.root / f"{check_pool_id(pool)}.pid", f"{pid}\n".encode())

    def recorded(self, pool: str) -> PoolState | None:
        """The state as last written (what ``read`` corrects with the processes' truth)."""
        try:
            raw = json.loads(read_small(self.state_path(pool), 1 << 20))
        except (FileNotFoundError, ValueError, UnsafeCachePath):
            return None
        return state_from_json(raw)

    def read(self, pool: str) -> PoolState:
        """The pool's state as it really is: a pool whose supervisor died is ``crashed`` (unless it ended)."""
        state = self.recorded(pool)
        if state is None:
            raise NotFound(f"no engine pool {pool!r}; see `model-provisioner engines`")
        return truthful(state)

    def pools(self) -> list[PoolState]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.json")):
            state = self.recorded(path.stem) if _POOL_RE.fullmatch(path.stem) else None
            if state is not None and state.pool_id == path.stem:
                out.append(truthful(state))
            else:
                log.warning("%s is not a readable pool state (a link, or not ours); skipped", path)
        return out


def truthful(state: PoolState) -> PoolState:
    if state.state in ENDED:
        return state
    if not is_alive(state.supervisor_pid, state.supervisor_start):
        engine_alive = is_alive(state.pid, state.pid_start)
        why = "its supervisor is gone" + ("; the engine still runs unsupervised" if engine_alive else "")
        return replace(state, state="crashed", error=state.error or why)
    return state
