"""Engines through the public API: ``up`` with its handoff, ``down`` that marks the handoff stopped, and the
pools as JSON (the CLI and the HTTP API both use these; docs/engines.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_provisioner.api.handoff import write_engine_handoff
from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.config.engine_run import EngineRun
from model_provisioner.engines import pools
from model_provisioner.engines.gateway_record import live_gateway_models
from model_provisioner.engines.handoff import update_handoff
from model_provisioner.engines.state import PoolState, check_engine_kind
from model_provisioner.verify.results import ResolvedModel


def running_fields(state: PoolState) -> dict[str, Any]:
    """What the handoff adds for a started engine (additive over the model handoff)."""
    return {
        "engine": state.engine,
        "engine_version": state.engine_version,
        "provisioning_mode": state.provisioning_mode,
        "url": state.url,
        "pool_id": state.pool_id,
        "replica_id": state.replica_id,
        "pid": state.pid,
        "flags": state.flags,
        "state": state.state,
    }


def up(
    prov: ModelProvisioner,
    ref: str,
    run: EngineRun,
    *,
    digest: str | None = None,
    strict: bool | None = None,
    handoff_dir: str | None = None,
    api: bool = False,
) -> tuple[PoolState, ResolvedModel]:
    """``api``: the request came through the HTTP API (its supervisor keeps the API's rules on restarts).
    A failure after the engine started (the handoff cannot be written) stops it again."""
    kind = check_engine_kind(run.kind)  # a path is derived from it below: validated before anything runs
    handoff = str(Path(handoff_dir).absolute() / ".runtime" / "engines" / f"{kind}.json") if handoff_dir else None
    request = pools.UpRequest(ref, digest, strict, run, handoff, api=api)
    state, resolved = pools.up(prov, request, lambda: ModelProvisioner(prov.settings))
    if handoff_dir:
        try:
            write_engine_handoff(
                handoff_dir,
                state.engine,
                resolved,
                allow_remote_code=prov.settings.allow_remote_code,
                running=running_fields(state),
            )
        except BaseException:
            pools.down(prov, state.pool_id)
            raise
    return state, resolved


def down(prov: ModelProvisioner, pool: str, *, forget: bool = False) -> PoolState:
    """``forget``: the pool is not shown afterwards (``run``'s own pool); else it stays listed as stopped until
    the next ``up`` of that pool."""
    state = pools.down(prov, pool, forget=forget)
    update_handoff(state, {"state": "stopped", "pid": None})
    return state


def engines_json(prov: ModelProvisioner) -> list[dict[str, Any]]:
    """Every pool; a running gateway's pools carry its view under ``gateway`` (last use, queue, why unloaded)."""
    by_pool = {model["pool_id"]: model for model in live_gateway_models(prov.store.root) if "pool_id" in model}
    out = []
    for state in pools.pools(prov):
        shown = state.as_json()
        if state.pool_id in by_pool:
            shown["gateway"] = by_pool[state.pool_id]
        out.append(shown)
    return out
