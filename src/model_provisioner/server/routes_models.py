"""Routes about models: ensure (synchronous or as a job), jobs, the catalog, verify, push, rm."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse

from model_provisioner.api.engine_view import with_memory
from model_provisioner.api.shapes import entry_json
from model_provisioner.core.errors import NotFound, ProvisionerError, ServerBusy
from model_provisioner.core.refs import parse
from model_provisioner.obs.audit import CORRELATION_ID, audit
from model_provisioner.ops.push import push
from model_provisioner.ops.usage import usage
from model_provisioner.server.context import ApiContext, context, documented, error_body
from model_provisioner.server.jobs import Job, origin_of_ref
from model_provisioner.server.responses import EntryOut, JobOut, ModelsOut, PushOut, RemovedOut, ReportOut, ResolvedOut
from model_provisioner.server.routes_openai import openai_models
from model_provisioner.server.schemas import DIGEST_EXAMPLE, MODEL_EXAMPLE, EnsureRequest, PushRequest

router = APIRouter()
Ctx = Annotated[ApiContext, Depends(context)]
JOB_EXAMPLE = {
    "id": "3f2a…",
    "ref": "hf:TheOrg/Tiny-GGUF:Q4_K_M",
    "state": "queued",
    "progress": {"bytes_done": 0, "bytes_total": None},
    "result": None,
    "error": None,
}
ENTRY_EXAMPLE = {
    **{k: v for k, v in MODEL_EXAMPLE.items() if k not in ("engine", "from_cache", "bytes_fetched")},
    "ref": MODEL_EXAMPLE["id"],
    "scheme": "hf",
    "format": "gguf",
    "expected_digest": None,
    "strict": False,
    "pinned": False,
    "last_verified_ms": 1795296400000,
    "created_ms": 1795296400000,
    "last_used_ms": 1795296400000,
    "error": None,
}


@router.post(
    "/v1/models/ensure",
    tags=["models"],
    summary="Make a model present and verified",
    responses={
        **documented(ResolvedOut, MODEL_EXAMPLE, errors=(400, 403, 404, 422, 502, 503, 507)),
        202: {
            "description": "accepted as a job (wait=false)",
            "model": JobOut,
            "content": {"application/json": {"example": JOB_EXAMPLE}},
        },
    },
)
def ensure(
    ctx: Ctx,
    body: Annotated[
        EnsureRequest,
        Body(
            openapi_examples={
                "hf": {"summary": "a GGUF quant from the Hub", "value": {"ref": "hf:TheOrg/Tiny-GGUF:Q4_K_M"}},
                "pinned": {
                    "summary": "a pinned https file",
                    "value": {"ref": "https://cdn.example.com/m.gguf", "expected_digest": DIGEST_EXAMPLE},
                },
            }
        ),
    ],
    wait: bool = Query(True, description="false: run as a job, answer 202 with its id"),
) -> Any:
    ctx.check_ref_allowed(body.ref)
    model_ref = parse(body.ref)
    origin = origin_of_ref(model_ref)
    if wait:
        if origin is None:
            return ctx.run_ensure(body)
        if not ctx.sync_fetches.acquire(blocking=False):
            raise ServerBusy(
                f"{ctx.settings.api_max_sync_fetches} synchronous downloads are already running "
                "(api_max_sync_fetches); retry later, or send wait=false to run it as a job"
            )
        try:
            return ctx.run_ensure(body)
        finally:
            ctx.sync_fetches.release()
    job = Job(uuid.uuid4().hex, model_ref.id)
    cid = CORRELATION_ID.get()

    def work(job: Job) -> None:
        CORRELATION_ID.set(cid)
        try:
            job.result = ctx.run_ensure(body, job)
            job.state = "succeeded"
        except ProvisionerError as exc:
            job.error = error_body(exc)[1]["error"]
            job.state = "failed"

    ctx.jobs.submit(job, origin, work)
    return JSONResponse(job.as_json(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get(
    "/v1/jobs/{job_id}",
    tags=["jobs"],
    summary="Progress and result of an ensure job",
    responses=documented(
        JobOut, {**JOB_EXAMPLE, "state": "running", "progress": {"bytes_done": 1048576, "bytes_total": 4194304}}
    ),
)
def get_job(ctx: Ctx, job_id: str) -> Any:
    job = ctx.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job.as_json()


@router.get(
    "/v1/models",
    tags=["models"],
    summary="List the catalog; in OpenAI's shape (object, data) what the gateway serves",
    responses=documented(
        ModelsOut,
        {
            "object": "list",
            "data": [
                {"id": "tiny", "object": "model", "created": 0, "owned_by": "model-provisioner", "status": "loaded"}
            ],
            "models": [ENTRY_EXAMPLE],
            "disk_bytes": 896,
        },
        errors=(),
    ),
)
async def list_models(request: Request, ctx: Ctx) -> Any:
    prov = ctx.prov

    def catalog() -> tuple[list[dict[str, Any]], int]:
        entries = [entry_json(e, provisioning_now=prov.provisioning_now(e)) for e in prov.list_models()]
        return entries, usage(prov).disk_bytes

    models, disk_bytes = await asyncio.to_thread(catalog)
    servable = [m["id"] for m in models if m["format"] == "gguf" and m["lifecycle"] == "Active"]
    created = {m["id"]: m["created_ms"] or 0 for m in models}
    data = openai_models(request.app.state.gateway, servable, created)
    return {"object": "list", "data": data, "models": models, "disk_bytes": disk_bytes}


@router.post(
    "/v1/models/{model_id:path}/verify",
    tags=["models"],
    summary="Re-hash a model",
    responses=documented(
        ReportOut,
        {
            "id": MODEL_EXAMPLE["id"],
            "ok": True,
            "outcome": "verified",
            "expected": DIGEST_EXAMPLE,
            "actual": DIGEST_EXAMPLE,
            "local_path": MODEL_EXAMPLE["local_path"],
            "message": "ok",
        },
    ),
)
def verify(ctx: Ctx, model_id: str) -> Any:
    return ctx.prov.verify(model_id).__dict__


@router.post(
    "/v1/models/{model_id:path}/push",
    tags=["models"],
    summary="Publish a model to a team mirror (OCI registry or S3); waits for the upload",
    responses=documented(
        PushOut,
        {
            "destination": "oci://registry.internal/mirror/hf-org-repo:id-3f2a…",
            "files": 1,
            "bytes_uploaded": 1048576,
            "bytes_skipped": 0,
            "digest": DIGEST_EXAMPLE,
            "manifest_digest": DIGEST_EXAMPLE,
        },
        errors=(400, 403, 404, 502),
    ),
)
def push_model(
    ctx: Ctx,
    model_id: str,
    body: Annotated[
        PushRequest,
        Body(
            openapi_examples={
                "mirror": {"summary": "to a mirror root", "value": {"destination": "oci://registry.internal/m/"}},
                "s3": {"summary": "to an S3 prefix", "value": {"destination": "s3://team-models/llama/"}},
            }
        ),
    ],
) -> Any:
    result = push(ctx.prov, model_id, body.destination)
    audit("push", model_id=model_id, destination=result.destination, policy_label=ctx.settings.policy.label)
    return result.as_dict()


@router.get(
    "/v1/models/{model_id:path}",
    tags=["models"],
    summary="One catalog entry, with its verification history (the object `inspect --json` prints)",
    responses=documented(EntryOut, {**ENTRY_EXAMPLE, "verifications": []}),
)
def get_model(ctx: Ctx, model_id: str) -> Any:
    entry = ctx.prov.entry(model_id)
    if entry is None:
        raise NotFound(f"{parse(model_id).id} is not in the catalog")
    history = ctx.prov.catalog.verifications(entry.id)
    payload = entry_json(entry, history, provisioning_now=ctx.prov.provisioning_now(entry))
    with_memory(payload, ctx.settings.engines.llamacpp)
    return payload


@router.delete(
    "/v1/models/{model_id:path}",
    tags=["models"],
    summary="Remove a model (refused while leased)",
    responses=documented(RemovedOut, {"removed": [MODEL_EXAMPLE["id"]]}, errors=(400, 404, 409)),
)
def delete_model(ctx: Ctx, model_id: str, force: bool = False) -> Any:
    removed = ctx.prov.evict(model_id, force=force)
    if not removed:
        raise NotFound(f"{parse(model_id).id} is not in the catalog")
    audit("rm", model_id=parse(model_id).id, policy_label=ctx.settings.policy.label)
    return {"removed": removed}
