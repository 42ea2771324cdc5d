"""Routes about the cache and the service: leases, gc, metrics, liveness and readiness."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse, Response

from model_provisioner.api.shapes import lease_json
from model_provisioner.core.errors import NotFound
from model_provisioner.core.redact import redact_text
from model_provisioner.obs.metrics import METRICS
from model_provisioner.ops.leases import acquire_lease, live_leases
from model_provisioner.ops.usage import publish_cache_metrics
from model_provisioner.server.context import ApiContext, context, documented
from model_provisioner.server.responses import GcOut, LeaseOut, LeasesOut, ReleasedOut, StatusOut
from model_provisioner.server.schemas import MODEL_EXAMPLE, GcRequest, LeaseRequest

router = APIRouter()
Ctx = Annotated[ApiContext, Depends(context)]
ENGINE_LEASE = {"holder": "vllm-1", "ttl_s": 600}
METRICS_EXAMPLE = 'catalog_verifications_total{reason="verified",result="pass"} 3.0\n'
LEASE_EXAMPLE = {"lease_id": "9c1d…", "model_id": MODEL_EXAMPLE["id"], "holder": "vllm-1", "expires_ms": 1795300000000}


@router.post(
    "/v1/models/{model_id:path}/leases",
    tags=["leases"],
    summary="Lease a model (protects it)",
    status_code=201,
    responses=documented(LeaseOut, LEASE_EXAMPLE, status=201),
)
def lease(
    ctx: Ctx,
    model_id: str,
    body: Annotated[
        LeaseRequest,
        Body(
            openapi_examples={"engine": {"summary": "an engine process", "value": {"holder": "vllm-1", "ttl_s": 600}}}
        ),
    ],
) -> Any:
    made = acquire_lease(ctx.prov, model_id, holder=body.holder, ttl_s=body.seconds())
    return {"lease_id": made.lease_id, "model_id": made.model_id, "holder": made.holder, "expires_ms": made.expires_ms}


@router.get(
    "/v1/leases",
    tags=["leases"],
    summary="The live leases (expired ones and those of dead processes are dropped)",
    responses=documented(
        LeasesOut,
        {"leases": [{**LEASE_EXAMPLE, "host": "node-3", "pid": None, "created_ms": 1795296400000}]},
        errors=(),
    ),
)
def list_leases(ctx: Ctx) -> Any:
    return {"leases": [lease_json(lease) for lease in live_leases(ctx.prov)]}


@router.delete(
    "/v1/leases/{lease_id}",
    tags=["leases"],
    summary="Release a lease",
    responses=documented(ReleasedOut, {"released": "9c1d…"}, errors=(404,)),
)
def release(ctx: Ctx, lease_id: str) -> Any:
    if not ctx.prov.catalog.remove_lease(lease_id):
        raise NotFound(f"no lease {lease_id!r}")
    return {"released": lease_id}


@router.post(
    "/v1/gc",
    tags=["cache"],
    summary="Garbage-collect the cache",
    responses=documented(
        GcOut,
        {"dry_run": True, "removed": [{"kind": "blob", "what": "ab12…", "bytes": 42}], "bytes_freed": 42},
        errors=(400,),
    ),
)
def run_gc(
    ctx: Ctx,
    body: Annotated[
        GcRequest | None, Body(openapi_examples={"plan": {"summary": "dry run", "value": {"dry_run": True}}})
    ] = None,
) -> Any:
    body = body or GcRequest()
    report = ctx.prov.gc(max_bytes=body.max_size_bytes, dry_run=body.dry_run)
    return {"dry_run": report.dry_run, "removed": report.removed, "bytes_freed": report.bytes_freed}


@router.get(
    "/metrics",
    tags=["ops"],
    summary="Prometheus metrics",
    responses={
        200: {
            "content": {"text/plain": {"example": 'catalog_verifications_total{reason="verified",result="pass"} 3.0\n'}}
        }
    },
)
def metrics(ctx: Ctx) -> Response:
    publish_cache_metrics(ctx.prov)
    return Response(METRICS.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/healthz", tags=["ops"], summary="Liveness", responses=documented(StatusOut, {"status": "ok"}, errors=()))
async def healthz() -> Any:  # on the event loop: answers even when every worker thread is busy
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["ops"],
    summary="Readiness: catalog and cache usable",
    responses={
        **documented(StatusOut, {"status": "ready"}, errors=()),
        503: {
            "model": StatusOut,
            "content": {"application/json": {"example": {"status": "not ready", "reason": "cache not writable"}}},
        },
    },
)
def readyz(ctx: Ctx) -> Any:
    try:
        ctx.prov.catalog.get("__readyz__")
        if not os.access(ctx.prov.store.root, os.W_OK):
            raise OSError("cache not writable")
    except Exception as exc:
        return JSONResponse({"status": "not ready", "reason": redact_text(str(exc))}, status_code=503)
    return {"status": "ready"}
