"""The HTTP control plane (FastAPI + uvicorn): the same ``ModelProvisioner`` behind a small JSON API.

Security: binds 127.0.0.1 by default and refuses any other address without a bearer token; ``file:`` refs
are accepted only under ``api_file_roots`` (so the API cannot be used to read or register arbitrary files);
errors are ``{"error": {"code", "message"}}`` with the HTTP status matching the CLI exit code; every response
echoes ``X-Correlation-Id`` (taken from the request or generated), which also reaches logs and provenance.
The routes are in ``routes_models`` and ``routes_cache`` (docs/api.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.config.settings import Settings, api_settings
from model_provisioner.core.errors import InvalidInput, ProvisionerError
from model_provisioner.core.redact import redact_text
from model_provisioner.core.version import VERSION
from model_provisioner.engines.gateway import Gateway
from model_provisioner.engines.gateway_record import GatewayRecord
from model_provisioner.engines.targets import target_of
from model_provisioner.obs.audit import CORRELATION_ID, audit
from model_provisioner.obs.metrics import METRICS
from model_provisioner.server import routes_cache, routes_engines, routes_models, routes_openai
from model_provisioner.server.bodylimit import BodyLimit
from model_provisioner.server.context import error_body, make_context


def create_app(settings: Settings | None = None, provisioner: ModelProvisioner | None = None) -> FastAPI:
    settings = api_settings(settings or Settings.from_env())
    prov = provisioner or ModelProvisioner(settings)
    METRICS.enable()
    ctx = make_context(settings, prov)
    gateway = Gateway(
        prov,
        settings.gateway,
        lambda name: target_of(name, settings.gateway, ctx.check_ref_allowed),
        GatewayRecord(prov.store.root),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the engines are ours, on loopback: no proxy, no environment; a token may take long to come
        app.state.upstream = httpx.AsyncClient(
            trust_env=False, timeout=httpx.Timeout(10.0, read=600.0), limits=httpx.Limits(max_connections=None)
        )
        sweep = asyncio.get_running_loop().create_task(gateway.sweep())
        try:
            yield
        finally:
            sweep.cancel()
            await gateway.close()  # the engines the gateway started stop with the server
            await app.state.upstream.aclose()

    app = FastAPI(
        title="model-provisioner",
        version=VERSION,
        description="Ensure, verify and manage models on this machine; one OpenAI-compatible endpoint for every "
        "verified model. Errors: {error: {code, message}}.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.ctx = ctx
    app.state.provisioner = prov
    app.state.jobs = ctx.jobs
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    _install_middleware(app, settings)
    app.include_router(routes_models.router)
    app.include_router(routes_cache.router)
    app.include_router(routes_engines.router)
    app.include_router(routes_openai.router)
    return app


def _install_middleware(app: FastAPI, settings: Settings) -> None:
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
                # the scheme is case-insensitive (RFC 9110 §11.1), the token is not
                scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
                accepted = scheme.lower() == "bearer" and hmac.compare_digest(
                    given.strip().encode(), settings.api_token.encode()
                )
                if not accepted:
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
        status, body = error_body(exc)
        retry_after = getattr(exc, "retry_after_s", 5.0 if status == 503 else None)
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"invalid request: {where}: {first.get('msg', 'invalid')}"
        return JSONResponse({"error": {"code": "invalid_input", "message": redact_text(message)}}, status_code=400)


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
    import uvicorn  # noqa: PLC0415  # heavy: uvicorn, only to serve

    check_port_free(host, port)
    app = create_app(settings)
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


def check_port_free(host: str, port: int) -> None:
    """A port in use is one line naming it (uvicorn would print its own traceback-like error)."""
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
