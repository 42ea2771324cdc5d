"""The OpenAI-compatible endpoint (docs/engines.md, "One endpoint for every model"; docs/api.md).

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` take the ``model`` of the request to
the gateway (``engines/gateway.py``: loaded on demand, once), then pass the request to that model's engine and
its answer back as it arrives (SSE or not, never buffered). A client that goes away closes the connection to the
engine, which stops generating. ``POST /v1/models/load`` and ``/v1/models/unload`` drive the gateway by hand;
``GET /v1/models`` (``routes_models``) lists what it serves in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Mapping
from typing import Annotated, Any, TypeVar

import anyio
import httpx
from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from model_provisioner.config.gateway import seconds
from model_provisioner.core.errors import ConfigError, EngineFailed, InvalidInput
from model_provisioner.engines.gateway import Gateway, Ticket
from model_provisioner.obs.metrics import METRICS
from model_provisioner.server.context import documented
from model_provisioner.server.responses import GatewayModelOut, OpenAIAnswer
from model_provisioner.server.schemas import StrictBody

router = APIRouter()
T = TypeVar("T")
#: how a completed answer says how many tokens it generated and how fast (llama-server's timings; usage)
_RATE_RE = re.compile(rb'"predicted_per_second"\s*:\s*([0-9.eE+-]+)')
_TOKENS_RE = re.compile(rb'"(?:completion_tokens|predicted_n)"\s*:\s*(\d+)')
#: the engine's headers a client gets (the rest describe the engine's connection, not the answer)
_PASSED_HEADERS = ("content-type", "cache-control")


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``work``, cancelled when the client goes away first (a request waiting for a model's load, or for the
    engine's headers, frees its place)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        raise InvalidInput("the client went away")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Passthrough(Response):
    """The engine's answer as it arrives. Its request's ticket is released however the response ends: completed,
    the client gone (noticed at once by a listener, not at the next write), or the engine failing."""

    def __init__(self, upstream: httpx.Response, ticket: Ticket, gw: Gateway, started: float) -> None:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_HEADERS}
        super().__init__(status_code=upstream.status_code, headers=headers)
        # the length is the engine's to know: the body goes out chunked as it arrives
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.upstream, self.ticket, self.gw, self.started = upstream, ticket, gw, started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        first: float | None = None
        tail = b""
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    nonlocal first, tail
                    await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                    async for chunk in self.upstream.aiter_raw():
                        if first is None:
                            first = time.monotonic()
                        tail = (tail + chunk)[-4096:]
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    group.cancel_scope.cancel()

                async def listen() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(listen)
        finally:
            await self.upstream.aclose()
            self.gw.release(self.ticket)
            METRICS.gateway_request(
                self.ticket.slot.target.name,
                first - self.started if first is not None else None,
                _tokens_per_second(tail, time.monotonic() - first if first is not None else 0.0),
            )


def _tokens_per_second(tail: bytes, seconds_after_first_byte: float) -> float | None:
    """The engine's own rate when it reports one, else the tokens it reports over the time they streamed."""
    rates = _RATE_RE.findall(tail)
    if rates:
        try:
            return float(rates[-1])
        except ValueError:
            return None
    tokens = _TOKENS_RE.findall(tail)
    return int(tokens[-1]) / seconds_after_first_byte if tokens and seconds_after_first_byte > 0 else None


async def _request_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the request body is not JSON; send an OpenAI request object") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object with a model")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model is missing: name an alias, a model id (GET /v1/models) or a ref")
    return body


def keep_alive_of(value: Any) -> float | None:
    """Ollama's ``keep_alive``: seconds or a duration (``5m``); 0 unloads after this request; negative: never
    idle-unloaded."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput("keep_alive must be a number of seconds or a duration such as 5m")
    try:
        return seconds("request", "keep_alive", value)
    except ConfigError:
        raise InvalidInput(f"keep_alive {str(value)[:40]!r} is not a duration; use seconds or e.g. 30s, 5m") from None


async def proxy(request: Request, path: str) -> Response:
    started = time.monotonic()
    body = await _request_json(request)
    keep = keep_alive_of(body.pop("keep_alive", None))
    gw = gateway(request)
    ticket = await until_disconnect(request, gw.acquire(body["model"], keep))
    client: httpx.AsyncClient = request.app.state.upstream
    outgoing = client.build_request(
        "POST", ticket.url + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        upstream = await until_disconnect(request, client.send(outgoing, stream=True))
    except BaseException as exc:
        gw.release(ticket)
        if isinstance(exc, httpx.TransportError):
            await gw.crashed(ticket)
            raise EngineFailed(
                f"the engine of model {body['model'][:200]!r} did not answer ({type(exc).__name__}); retry: the "
                "gateway loads it again if it stopped"
            ) from None
        raise
    return Passthrough(upstream, ticket, gw, started)


CHAT_EXAMPLE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1764720000,
    "model": "hf:TheOrg/Tiny-GGUF:Q4_K_M",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
}
COMPLETION_EXAMPLE = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1764720000,
    "model": "hf:TheOrg/Tiny-GGUF:Q4_K_M",
    "choices": [{"index": 0, "text": " a time", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
EMBEDDING_EXAMPLE = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.012, -0.034]}],
    "model": "hf:TheOrg/Tiny-GGUF:Q4_K_M",
    "usage": {"prompt_tokens": 3, "total_tokens": 3},
}
#: every error of a request through the gateway: its model unknown (404), refused by policy (403), failing
#: verification (422), its queue full (503), no memory for it (507), its engine failing (502)
GATEWAY_ERRORS = (400, 403, 404, 422, 502, 503, 507)


def _body(example: dict[str, Any]) -> dict[str, Any]:
    """The request body as OpenAPI shows it (the gateway passes it on as it is, adding nothing)."""
    schema = {"type": "object", "required": ["model"], "additionalProperties": True}
    examples = {"default": {"summary": "an alias of the models: list", "value": example}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema, "examples": examples}}}
    }


@router.post(
    "/v1/chat/completions",
    tags=["openai"],
    summary="OpenAI chat completions through the gateway (stream: true for SSE); keep_alive as Ollama's",
    responses=documented(OpenAIAnswer, CHAT_EXAMPLE, errors=GATEWAY_ERRORS),
    openapi_extra=_body({"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "stream": True}),
)
async def chat_completions(request: Request) -> Response:
    return await proxy(request, "/v1/chat/completions")


@router.post(
    "/v1/completions",
    tags=["openai"],
    summary="OpenAI completions through the gateway",
    responses=documented(OpenAIAnswer, COMPLETION_EXAMPLE, errors=GATEWAY_ERRORS),
    openapi_extra=_body({"model": "tiny", "prompt": "Once upon", "max_tokens": 2}),
)
async def completions(request: Request) -> Response:
    return await proxy(request, "/v1/completions")


@router.post(
    "/v1/embeddings",
    tags=["openai"],
    summary="OpenAI embeddings through the gateway (a model whose flags include --embeddings)",
    responses=documented(OpenAIAnswer, EMBEDDING_EXAMPLE, errors=GATEWAY_ERRORS),
    openapi_extra=_body({"model": "tiny-embed", "input": "Hello"}),
)
async def embeddings(request: Request) -> Response:
    return await proxy(request, "/v1/embeddings")


class ModelName(StrictBody):
    model: str
    keep_alive: float | str | None = None


NAME_EXAMPLES: dict[str, Any] = {"alias": {"summary": "an alias of the models: list", "value": {"model": "tiny"}}}
SLOT_EXAMPLE = {
    "model": "tiny",
    "model_id": "hf:TheOrg/Tiny-GGUF:Q4_K_M",
    "pool_id": "gw-3f2a9c1b7d4e",
    "state": "ready",
    "in_flight": 0,
    "queue_depth": 0,
    "last_used_ms": 1764720000000,
    "keep_alive_s": 300.0,
    "url": "http://127.0.0.1:41234",
}


@router.post(
    "/v1/models/load",
    tags=["openai"],
    summary="Load a model now (as its first request would); answers when its engine is ready",
    responses=documented(GatewayModelOut, SLOT_EXAMPLE, errors=(400, 403, 404, 422, 502, 503, 507)),
)
async def load_model(request: Request, body: Annotated[ModelName, Body(openapi_examples=NAME_EXAMPLES)]) -> Any:
    gw = gateway(request)
    ticket = await until_disconnect(request, gw.acquire(body.model, keep_alive_of(body.keep_alive)))
    gw.release(ticket)
    return ticket.slot.as_json()


@router.post(
    "/v1/models/unload",
    tags=["openai"],
    summary="Unload a model (after its running requests); answers when its engine is stopped",
    responses=documented(GatewayModelOut, {**SLOT_EXAMPLE, "state": "unloaded"}, errors=(400, 404)),
)
async def unload_model(request: Request, body: Annotated[ModelName, Body(openapi_examples=NAME_EXAMPLES)]) -> Any:
    return await gateway(request).unload(body.model)


def openai_models(gw: Gateway, catalog_ids: list[str], created: Mapping[str, int]) -> list[dict[str, Any]]:
    """``GET /v1/models``'s ``data``: the aliases, the loaded models and the catalog's GGUF models."""
    states: dict[str, str] = {}
    for slot in gw.slots.values():
        states.setdefault(slot.target.name, type(slot.phase).__name__.lower())
        states.setdefault(slot.target.model_id, type(slot.phase).__name__.lower())
    names = [m.alias for m in gw.settings.models] + [s.target.name for s in gw.slots.values()] + catalog_ids
    out: list[dict[str, Any]] = []
    for name in dict.fromkeys(names):
        state = states.get(name, "unloaded")
        out.append(
            {
                "id": name,
                "object": "model",
                "created": created.get(name, 0) // 1000,
                "owned_by": "model-provisioner",
                "status": "loaded" if state in ("ready", "draining") else state,
            }
        )
    return out
