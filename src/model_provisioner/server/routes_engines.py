"""Routes about engines: start one on a verified model, list pools, stop one (docs/engines.md).

Through the API an engine binary is never chosen by the caller (only by the settings), and only engine flags
that tune the engine (threads, context, batch sizes, GPU layers, seed…) are accepted: flags that name files
or open other ports would let a caller reach what the API otherwise refuses."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, Field

from model_provisioner.api import engines as engine_api
from model_provisioner.config.engine_run import EngineRun
from model_provisioner.config.engines import EngineKind, LlamaCppSettings
from model_provisioner.core.errors import InvalidInput, PolicyDenied, ServerBusy
from model_provisioner.engines import llamacpp
from model_provisioner.engines.dispatch import kind_of
from model_provisioner.engines.pools import run_dir
from model_provisioner.server.context import ApiContext, context, documented
from model_provisioner.server.responses import EngineOut, EnginesOut
from model_provisioner.server.schemas import DIGEST_EXAMPLE, StrictBody

router = APIRouter()
Ctx = Annotated[ApiContext, Depends(context)]
GGUF_REQUEST = {"ref": "hf:TheOrg/Tiny-GGUF:Q4_K_M"}
ENGINE_EXAMPLE = {
    "pool_id": "default",
    "engine": "llamacpp",
    "model_id": "hf:TheOrg/Tiny-GGUF:Q4_K_M",
    "digest": DIGEST_EXAMPLE,
    "state": "ready",
    "url": "http://127.0.0.1:41234",
    "pid": 4242,
    "restarts": 0,
    "uptime_s": 12.5,
    "engine_version": "0.5.0-dev (build 1, commit 0c1e570)",
    "log_path": "/var/cache/models/run/default.engine.log",
}


class EngineRequest(StrictBody):
    ref: str = Field(
        max_length=4096, description="the model; every ensure rule applies (file: refs only under api_file_roots)"
    )
    expected_digest: str | None = Field(
        default=None, max_length=200, validation_alias=AliasChoices("expected_digest", "digest")
    )
    strict: bool | None = None
    engine: EngineKind = Field(default="llamacpp", description="llamacpp or triton")
    pool: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    port: int = Field(default=0, ge=0, le=65535, description="0 or a taken port: a free one")
    flags: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=64, description="tuning flags only, e.g. ['--threads', '2']"
    )


def _check_flags(engine: str, flags: list[str], settings: LlamaCppSettings) -> None:
    """Tuning flags only (the kind's own list), and within the operator's limits (context, threads, slots)."""
    safe = kind_of(engine).api_safe_flags
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name.startswith("-") and name not in safe:
            allowed = ", ".join(sorted(safe)) or f"none for {engine}"
            raise PolicyDenied(
                f"engine flag {name[:60]!r} is not accepted through the API (tuning flags only: {allowed}); "
                "start the engine with the CLI to use it"
            )
    threads = settings.max_threads or os.cpu_count() or 1
    limits = {
        "--ctx-size": (settings.max_ctx_size, "engines.llamacpp.max_ctx_size"),
        "--threads": (threads, "engines.llamacpp.max_threads"),
        "--threads-batch": (threads, "engines.llamacpp.max_threads"),
        "--parallel": (settings.max_parallel, "engines.llamacpp.max_parallel"),
    }
    for name, value in llamacpp.options(flags):
        if name not in limits:
            continue
        limit, setting = limits[name]
        if value is None or not value.strip().lstrip("-").isdigit():
            raise InvalidInput(f"engine flag {name} needs a whole number, got {str(value)[:40]!r}")
        if not 0 < int(value) <= limit:
            raise PolicyDenied(
                f"engine flag {name} {value[:20]} is past this server's limit ({limit}, {setting}); ask for at most "
                f"{limit}, or have the operator raise {setting}"
            )


@router.post(
    "/v1/engines",
    tags=["engines"],
    summary="Ensure a model and start its engine; answers when it is ready",
    status_code=201,
    responses=documented(EngineOut, ENGINE_EXAMPLE, status=201, errors=(400, 403, 404, 422, 502, 503)),
)
def start_engine(
    ctx: Ctx,
    body: Annotated[
        EngineRequest,
        Body(
            openapi_examples={
                "gguf": {"summary": "llama-server on a Hub GGUF", "value": {"ref": "hf:TheOrg/Tiny-GGUF:Q4_K_M"}}
            }
        ),
    ],
) -> Any:
    ctx.check_ref_allowed(body.ref)
    _check_flags(body.engine, body.flags, ctx.settings.engines.llamacpp)
    run = EngineRun(kind=body.engine, pool=body.pool, port=body.port, flags=tuple(body.flags))
    handoff = ctx.settings.api_handoff_dir
    # a start holds a server thread until the engine is ready: bounded like synchronous downloads
    if not ctx.sync_fetches.acquire(blocking=False):
        raise ServerBusy(
            f"{ctx.settings.api_max_sync_fetches} synchronous requests are already running "
            "(api_max_sync_fetches); retry later"
        )
    try:
        state, _ = engine_api.up(
            ctx.prov, body.ref, run, digest=body.expected_digest, strict=body.strict, handoff_dir=handoff, api=True
        )
    finally:
        ctx.sync_fetches.release()
    return JSONResponse(state.as_json(), status_code=201)


@router.get(
    "/v1/engines",
    tags=["engines"],
    summary="Every engine pool",
    responses=documented(EnginesOut, {"engines": [ENGINE_EXAMPLE]}, errors=()),
)
async def list_engines(request: Request, ctx: Ctx) -> Any:
    """The pools (the gateway's among them, each with its ``gateway`` view: last use, queue, why it was
    unloaded), and the gateway's models with or without an engine."""
    pools = await asyncio.to_thread(engine_api.engines_json, ctx.prov)
    slots = request.app.state.gateway.listing()
    by_pool = {slot["pool_id"]: slot for slot in slots}
    for pool in pools:  # this server's own view, newer than its record
        if pool["pool_id"] in by_pool:
            pool["gateway"] = by_pool[pool["pool_id"]]
    return {"engines": pools, "gateway": slots}


@router.get(
    "/v1/engines/{pool}",
    tags=["engines"],
    summary="One engine pool",
    responses=documented(EngineOut, ENGINE_EXAMPLE, errors=(400, 404)),
)
def get_engine(ctx: Ctx, pool: str) -> Any:
    return run_dir(ctx.prov).read(pool).as_json()


@router.delete(
    "/v1/engines/{pool}",
    tags=["engines"],
    summary="Stop an engine pool (the port is free when it answers)",
    responses=documented(EngineOut, {**ENGINE_EXAMPLE, "state": "stopped", "pid": None}, errors=(400, 404)),
)
def stop_engine(ctx: Ctx, pool: str) -> Any:
    return engine_api.down(ctx.prov, pool).as_json()
