"""What every route works with (``ApiContext``, one per app), the error body every failure gets, and the
OpenAPI response documentation (schema + example) every route declares."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from model_provisioner.api.handoff import choose_engine, provision_and_handoff
from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import LeaseHeld, PolicyDenied, ProvisionerError, ServerBusy, VerificationFailed
from model_provisioner.core.redact import redact_text
from model_provisioner.core.refs import FileRef, parse
from model_provisioner.obs.audit import CORRELATION_ID
from model_provisioner.server.jobs import Job, JobRegistry
from model_provisioner.server.responses import ErrorOut
from model_provisioner.server.schemas import ERROR_EXAMPLE, STATUS_BY_EXIT, EnsureRequest, in_api_terms


@dataclass
class ApiContext:
    settings: Settings
    prov: ModelProvisioner
    jobs: JobRegistry
    #: synchronous remote ensures hold a server thread each: bounded, so probes and local work stay responsive
    sync_fetches: threading.BoundedSemaphore
    roots: tuple[str, ...] = field(default=())

    def check_ref_allowed(self, ref: str) -> None:
        model_ref = parse(ref)
        if isinstance(model_ref, FileRef):
            path = str(model_ref.path)  # parse() resolved it; the provisioner checks the file it hashes again
            if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in self.roots):
                raise PolicyDenied(
                    f"{model_ref.id}: file refs through the API are limited to the configured roots "
                    f"({', '.join(self.roots) or 'none configured: set api_file_roots'})"
                )

    def run_ensure(self, body: EnsureRequest, job: Job | None = None) -> dict[str, Any]:
        def progress(done: int, total: int | None) -> None:
            if job is not None:
                job.bytes_done, job.bytes_total = done, total

        if body.engine and self.settings.api_handoff_dir:
            resolved, handoff = provision_and_handoff(
                self.prov,
                body.ref,
                self.settings.api_handoff_dir,
                expected_digest=body.expected_digest,
                strict=body.strict,
                engine=body.engine,
                correlation_id=CORRELATION_ID.get(),
                refresh=body.refresh,
                progress=progress,
            )
            return resolved.as_json(handoff.stem)
        resolved = self.prov.ensure_present(
            body.ref, body.expected_digest, strict=body.strict, refresh=body.refresh, progress=progress
        )
        return resolved.as_json(choose_engine(resolved, body.engine) if body.engine else None)


def make_context(settings: Settings, prov: ModelProvisioner) -> ApiContext:
    return ApiContext(
        settings,
        prov,
        JobRegistry(
            max(4, settings.max_parallel_fetches),
            per_origin=settings.api_jobs_per_origin,
            max_pending=settings.api_max_queued_jobs,
        ),
        threading.BoundedSemaphore(settings.api_max_sync_fetches),
        tuple(os.path.realpath(r) for r in settings.api_file_roots),
    )


def context(request: Request) -> ApiContext:
    """The FastAPI dependency every route takes."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def error_body(exc: ProvisionerError) -> tuple[int, dict[str, Any]]:
    status = (
        409
        if isinstance(exc, LeaseHeld)
        else 503
        if isinstance(exc, ServerBusy)
        else 403  # the signature policy refused it (exit 4 on the command line): forbidden, not malformed
        if isinstance(exc, VerificationFailed) and exc.reason in ("unsigned", "signature")
        else STATUS_BY_EXIT.get(exc.exit_code, 500)
    )
    return status, {"error": {"code": exc.code, "message": in_api_terms(redact_text(str(exc)))}}


def documented(
    model: type[BaseModel] | None, example: Any, status: int = 200, errors: tuple[int, ...] = (400, 404)
) -> dict[int | str, Any]:
    """OpenAPI ``responses``: the success schema with an example, and the error schema for each error status."""
    ok: dict[str, Any] = {"content": {"application/json": {"example": example}}}
    if model is not None:
        ok["model"] = model
    out: dict[int | str, Any] = {status: ok}
    for code in errors:
        out[code] = {
            "description": "error",
            "model": ErrorOut,
            "content": {"application/json": {"example": ERROR_EXAMPLE}},
        }
    return out
