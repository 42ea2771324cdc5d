"""The HTTP control plane (FastAPI + uvicorn): the same ``ModelProvisioner`` behind a small JSON API.

Security: binds 127.0.0.1 by default and refuses any other address without a bearer token; ``file:`` refs
are accepted only under ``api_file_roots`` (so the API cannot be used to read or register arbitrary files);
errors are ``{"error": {"code", "message"}}`` with the HTTP status matching the CLI exit code; every response
echoes ``X-Correlation-Id`` (taken from the request or generated), which also reaches logs and provenance.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import threading
import time
import uuid
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .api_models import (
    DIGEST_EXAMPLE,
    ERROR_EXAMPLE,
    MODEL_EXAMPLE,
    STATUS_BY_EXIT,
    EnsureRequest,
    GcRequest,
    LeaseRequest,
    PushRequest,
    in_api_terms,
)
from .config import Settings, api_settings
from .errors import InvalidInput, NotFound, PolicyDenied, ProvisionerError
from .jobs import Job, JobRegistry, ServerBusy, origin_of_ref
from .observability import CORRELATION_ID, METRICS, audit
from .provisioner import ModelProvisioner, ResolvedModel
from .redact import redact_text
from .refs import FileRef, parse


def _error_body(exc: ProvisionerError) -> tuple[int, dict[str, Any]]:
    from .lifecycle import LeaseHeld

    status = 409 if isinstance(exc, LeaseHeld) else 503 if isinstance(exc, ServerBusy) else STATUS_BY_EXIT.get(
        exc.exit_code, 500
    )
    return status, {"error": {"code": exc.code, "message": in_api_terms(redact_text(str(exc)))}}


def _examples(ok: Any, status: int = 200, errors: tuple[int, ...] = (400, 404)) -> dict[int | str, Any]:
    out: dict[int | str, Any] = {status: {"content": {"application/json": {"example": ok}}}}
    for code in errors:
        out[code] = {"description": "error", "content": {"application/json": {"example": ERROR_EXAMPLE}}}
    return out


def create_app(settings: Settings | None = None, provisioner: ModelProvisioner | None = None) -> FastAPI:
    settings = api_settings(settings or Settings.from_env())
    prov = provisioner or ModelProvisioner(settings)
    METRICS.enable()
    jobs = JobRegistry(max(4, settings.max_parallel_fetches), per_origin=settings.api_jobs_per_origin)
    # synchronous remote ensures hold a server thread each: bounded, so probes and local work stay responsive
    sync_fetches = threading.BoundedSemaphore(settings.api_max_sync_fetches)
    roots = tuple(os.path.realpath(r) for r in settings.api_file_roots)
    app = FastAPI(
        title="model-provisioner",
        version="0.1.0",
        description="Ensure, verify and manage models on this machine. Errors: {error: {code, message}}.",
    )
    app.state.provisioner = prov
    app.state.jobs = jobs
    from .bodylimit import BodyLimit

    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)

    # ------------------------------------------------------------------------------- middleware
    @app.middleware("http")
    async def correlation_and_auth(request: Request, call_next: Any) -> Response:
        cid = request.headers.get("X-Correlation-Id") or uuid.uuid4().hex
        cid = "".join(c for c in cid if c.isalnum() or c in "-_.:")[:128] or uuid.uuid4().hex
        token = CORRELATION_ID.set(cid)
        started = time.monotonic()
        status = 500
        try:
            open_paths = ("/healthz", "/readyz")
            if settings.api_token and request.url.path not in open_paths:
                given = request.headers.get("Authorization", "")
                expected = f"Bearer {settings.api_token}"
                if not hmac.compare_digest(given.encode(), expected.encode()):
                    response: Response = JSONResponse(
                        {"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}},
                        status_code=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                    response.headers["X-Correlation-Id"] = cid
                    status = response.status_code
                    return response
            response = await call_next(request)
            response.headers["X-Correlation-Id"] = cid
            status = response.status_code
            return response
        finally:
            # one line per request, denied ones included: the audit trail exists for exactly those
            audit(
                "request",
                method=request.method,
                path=request.url.path[:300],
                status=status,
                duration_ms=int((time.monotonic() - started) * 1000),
                correlation_id=cid,
            )
            CORRELATION_ID.reset(token)

    @app.exception_handler(ProvisionerError)
    async def provisioner_error(request: Request, exc: ProvisionerError) -> JSONResponse:
        status, body = _error_body(exc)
        return JSONResponse(body, status_code=status, headers={"Retry-After": "5"} if status == 503 else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"invalid request: {where}: {first.get('msg', 'invalid')}"
        return JSONResponse({"error": {"code": "invalid_input", "message": redact_text(message)}}, status_code=400)

    def check_ref_allowed(ref: str) -> None:
        model_ref = parse(ref)
        if isinstance(model_ref, FileRef):
            path = str(model_ref.path)  # parse() resolved it; the provisioner checks the file it hashes again
            if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
                raise PolicyDenied(
                    f"{model_ref.id}: file refs through the API are limited to the configured roots "
                    f"({', '.join(roots) or 'none configured: set api_file_roots'})"
                )

    def resolved_json(resolved: ResolvedModel, engine: str | None) -> dict[str, Any]:
        return resolved.as_json(engine)

    def run_ensure(body: EnsureRequest, job: Job | None = None) -> dict[str, Any]:
        from .handoff import choose_engine

        def progress(done: int, total: int | None) -> None:
            if job is not None:
                job.bytes_done, job.bytes_total = done, total

        if body.engine and settings.api_handoff_dir:
            from .handoff import provision_and_handoff

            resolved, handoff = provision_and_handoff(
                prov,
                body.ref,
                settings.api_handoff_dir,
                expected_digest=body.expected_digest,
                strict=body.strict,
                engine=body.engine,
                correlation_id=CORRELATION_ID.get(),
                refresh=body.refresh,
                progress=progress,
            )
            return resolved_json(resolved, handoff.stem)
        resolved = prov.ensure_present(
            body.ref, body.expected_digest, body.strict, refresh=body.refresh, progress=progress
        )
        engine = choose_engine(resolved, body.engine) if body.engine else None
        return resolved_json(resolved, engine)

    # ------------------------------------------------------------------------------- endpoints
    @app.post(
        "/v1/models/ensure",
        tags=["models"],
        summary="Make a model present and verified",
        responses={
            **_examples(MODEL_EXAMPLE, errors=(400, 403, 404, 422, 502, 507)),
            202: {
                "description": "accepted as a job (wait=false)",
                "content": {
                    "application/json": {
                        "example": {
                            "id": "3f2a…",
                            "ref": "hf:TheOrg/Tiny-GGUF:Q4_K_M",
                            "state": "queued",
                            "progress": {"bytes_done": 0, "bytes_total": None},
                            "result": None,
                            "error": None,
                        }
                    }
                },
            },
        },
    )
    def ensure(
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
        check_ref_allowed(body.ref)
        model_ref = parse(body.ref)
        origin = origin_of_ref(model_ref)
        if wait:
            if origin is None:
                return run_ensure(body)
            if not sync_fetches.acquire(blocking=False):
                raise ServerBusy(
                    f"{settings.api_max_sync_fetches} synchronous downloads are already running "
                    "(api_max_sync_fetches); retry later, or send wait=false to run it as a job"
                )
            try:
                return run_ensure(body)
            finally:
                sync_fetches.release()
        job = Job(uuid.uuid4().hex, model_ref.id)
        cid = CORRELATION_ID.get()

        def work(job: Job) -> None:
            CORRELATION_ID.set(cid)
            try:
                job.result = run_ensure(body, job)
                job.state = "succeeded"
            except ProvisionerError as exc:
                job.error = _error_body(exc)[1]["error"]
                job.state = "failed"

        jobs.submit(job, origin, work)
        return JSONResponse(job.as_json(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        summary="Progress and result of an ensure job",
        responses=_examples(
            {
                "id": "3f2a…",
                "ref": "hf:TheOrg/Tiny-GGUF:Q4_K_M",
                "state": "running",
                "progress": {"bytes_done": 1048576, "bytes_total": 4194304},
                "result": None,
                "error": None,
            }
        ),
    )
    def get_job(job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job.as_json()

    @app.get(
        "/v1/models",
        tags=["models"],
        summary="List the catalog",
        responses=_examples({"models": [MODEL_EXAMPLE], "disk_bytes": 896}, errors=()),
    )
    def list_models() -> Any:
        from .lifecycle import usage

        entries = prov.list_models()
        return {"models": [_entry_json(e) for e in entries], "disk_bytes": usage(prov).disk_bytes}

    @app.post(
        "/v1/models/{model_id:path}/verify",
        tags=["models"],
        summary="Re-hash a model",
        responses=_examples(
            {
                "id": MODEL_EXAMPLE["id"],
                "ok": True,
                "outcome": "verified",
                "expected": DIGEST_EXAMPLE,
                "actual": DIGEST_EXAMPLE,
                "local_path": MODEL_EXAMPLE["local_path"],
                "message": "ok",
            },
            errors=(400, 404),
        ),
    )
    def verify(model_id: str) -> Any:
        report = prov.verify(model_id)
        return report.__dict__

    @app.post(
        "/v1/models/{model_id:path}/push",
        tags=["models"],
        summary="Publish a model to a team mirror (OCI registry or S3); waits for the upload",
        responses=_examples(
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
        from .mirror import push

        result = push(prov, model_id, body.destination)
        audit("push", model_id=model_id, destination=result.destination, policy_label=settings.policy.label)
        return result.as_dict()

    @app.post(
        "/v1/models/{model_id:path}/leases",
        tags=["leases"],
        summary="Lease a model (protects it)",
        status_code=201,
        responses=_examples(
            {"lease_id": "9c1d…", "model_id": MODEL_EXAMPLE["id"], "holder": "vllm-1", "expires_ms": 1795300000000},
            status=201,
            errors=(400, 404),
        ),
    )
    def lease(
        model_id: str,
        body: Annotated[
            LeaseRequest,
            Body(
                openapi_examples={
                    "engine": {"summary": "an engine process", "value": {"holder": "vllm-1", "ttl_s": 600}}
                }
            ),
        ],
    ) -> Any:
        from .lifecycle import acquire_lease

        made = acquire_lease(prov, model_id, holder=body.holder, ttl_s=body.seconds())
        return {
            "lease_id": made.lease_id,
            "model_id": made.model_id,
            "holder": made.holder,
            "expires_ms": made.expires_ms,
        }

    @app.get(
        "/v1/leases",
        tags=["leases"],
        summary="The live leases (expired ones and those of dead processes are dropped)",
        responses=_examples(
            {"leases": [{"lease_id": "9c1d…", "model_id": MODEL_EXAMPLE["id"], "holder": "vllm-1", "host": "node-3",
                         "pid": None, "created_ms": 1795296400000, "expires_ms": 1795300000000}]},
            errors=(),
        ),
    )
    def list_leases() -> Any:
        from .lifecycle import lease_json, live_leases

        return {"leases": [lease_json(lease) for lease in live_leases(prov)]}

    @app.delete(
        "/v1/leases/{lease_id}",
        tags=["leases"],
        summary="Release a lease",
        responses=_examples({"released": "9c1d…"}, errors=(404,)),
    )
    def release(lease_id: str) -> Any:
        if not prov.catalog.remove_lease(lease_id):
            raise NotFound(f"no lease {lease_id!r}")
        return {"released": lease_id}

    @app.get(
        "/v1/models/{model_id:path}",
        tags=["models"],
        summary="One catalog entry",
        responses=_examples(MODEL_EXAMPLE, errors=(400, 404)),
    )
    def get_model(model_id: str) -> Any:
        entry = prov.entry(model_id)
        if entry is None:
            raise NotFound(f"{parse(model_id).id} is not in the catalog")
        return _entry_json(entry)

    @app.delete(
        "/v1/models/{model_id:path}",
        tags=["models"],
        summary="Remove a model (refused while leased)",
        responses=_examples({"removed": [MODEL_EXAMPLE["id"]]}, errors=(400, 404, 409)),
    )
    def delete_model(model_id: str, force: bool = False) -> Any:
        removed = prov.evict(model_id, force=force)
        if not removed:
            raise NotFound(f"{parse(model_id).id} is not in the catalog")
        audit("rm", model_id=parse(model_id).id, policy_label=settings.policy.label)
        return {"removed": removed}

    @app.post(
        "/v1/gc",
        tags=["cache"],
        summary="Garbage-collect the cache",
        responses=_examples(
            {"dry_run": True, "removed": [{"kind": "blob", "what": "ab12…", "bytes": 42}], "bytes_freed": 42},
            errors=(400,),
        ),
    )
    def run_gc(
        body: Annotated[
            GcRequest | None, Body(openapi_examples={"plan": {"summary": "dry run", "value": {"dry_run": True}}})
        ] = None,
    ) -> Any:
        body = body or GcRequest()
        report = prov.gc(max_bytes=body.max_size_bytes, dry_run=body.dry_run)
        return {"dry_run": report.dry_run, "removed": report.removed, "bytes_freed": report.bytes_freed}

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        responses={
            200: {
                "content": {
                    "text/plain": {"example": 'catalog_verifications_total{reason="verified",result="pass"} 3.0\n'}
                }
            }
        },
    )
    def metrics() -> Response:
        METRICS.refresh_catalog(prov)
        return Response(METRICS.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", tags=["ops"], summary="Liveness", responses=_examples({"status": "ok"}, errors=()))
    async def healthz() -> Any:  # on the event loop: answers even when every worker thread is busy
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: catalog and cache usable",
        responses={
            **_examples({"status": "ready"}, errors=()),
            503: {
                "content": {"application/json": {"example": {"status": "not ready", "reason": "cache not writable"}}}
            },
        },
    )
    def readyz() -> Any:
        try:
            prov.catalog.get("__readyz__")
            if not os.access(prov.store.root, os.W_OK):
                raise OSError("cache not writable")
        except Exception as exc:
            return JSONResponse({"status": "not ready", "reason": redact_text(str(exc))}, status_code=503)
        return {"status": "ready"}

    return app


def _entry_json(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "local_path": e.local_path,
        "digest": e.digest,
        "size_bytes": e.size_bytes,
        "lifecycle": str(e.lifecycle),
        "format": e.format,
        "verification": e.verification,
        "pinned": e.pinned,
        "last_used_ms": e.last_used_ms,
        "last_verified_ms": e.last_verified_ms,
        "metadata": e.metadata,
        "error": e.error,
    }


def check_bind(host: str, settings: Settings) -> None:
    """Refuse a non-loopback address without a token: the API can make this machine download and delete."""
    if settings.api_token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidInput(
            f"refusing to serve on {host} without a token: set MODEL_PROVISIONER_API_TOKEN (or api_token in "
            "settings), or bind 127.0.0.1"
        )


def serve(host: str, port: int, settings: Settings) -> None:
    check_bind(host, settings)
    import uvicorn

    _check_port_free(host, port)
    app = create_app(settings)
    import logging

    logging.getLogger("model_provisioner.audit").setLevel(logging.INFO)  # request lines, in either log format
    audit(
        "serving",
        url=f"http://{host if ':' not in host else f'[{host}]'}:{port}",
        cache=str(settings.cache_dir),
        auth="bearer token" if settings.api_token else "none",
    )
    # SIGTERM: uvicorn stops accepting, gives in-flight requests a few seconds, then returns here; running
    # transfers are cancelled at their next chunk (partials kept for the next run) and the process exits
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    stop_background_work(app)


def _check_port_free(host: str, port: int) -> None:
    """A port in use is one line naming it (uvicorn would print its own traceback-like error)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidInput(
                    f"port {port} on {host} is in use (another server is listening there); choose another with "
                    "--port, or stop that server"
                ) from None
            raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}; check --host and --port") from None


def stop_background_work(app: FastAPI, grace_s: float = 3.0) -> None:
    import logging
    import sys

    app.state.jobs.shutdown()
    app.state.provisioner.cancel_transfers()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(
        t.name.startswith("mprov-") and t.is_alive() for t in threading.enumerate()
    ):
        time.sleep(0.05)
    logging.shutdown()
    sys.stderr.flush()
    # worker threads still blocked in a read would hold the interpreter's exit; everything on disk is
    # crash-safe (kill -9 is tested), so leave now
    os._exit(0)
