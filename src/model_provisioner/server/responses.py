"""The HTTP API's response schemas, as they appear in ``docs/openapi.json``. The routes return the JSON shapes
of ``api/shapes.py`` (the CLI's ``--json`` shapes); these models document them field by field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="a stable code, e.g. not_found, mismatch, denied, transfer_failed")
    message: str = Field(description="one line naming the input and the fix (secrets redacted)")


class ErrorOut(BaseModel):
    error: ErrorDetail


class ResolvedOut(BaseModel):
    """What an ensure answers (``ResolvedModel.as_json``)."""

    id: str
    local_path: str
    digest: str
    size_bytes: int
    lifecycle: str
    engine: str | None = None
    verification: str | None = None
    from_cache: bool
    bytes_fetched: int
    metadata: dict[str, Any]
    origin: str | None = Field(default=None, description="present when the answer's origin is news")


class VerificationOut(BaseModel):
    ts_ms: int
    result: str
    reason: str
    digest: str | None
    bytes_hashed: int


class EntryOut(BaseModel):
    """A catalog entry (``api.shapes.entry_json``): the same object ``inspect --json`` prints."""

    id: str
    #: the first 12 hex of the digest (as ollama and docker show images)
    short_id: str | None = None
    ref: str
    scheme: str
    local_path: str
    lifecycle: str
    digest: str | None
    size_bytes: int
    format: str
    verification: str | None
    expected_digest: str | None
    strict: bool
    pinned: bool
    last_verified_ms: int | None
    created_ms: int
    last_used_ms: int
    metadata: dict[str, Any]
    error: str | None
    verifications: list[VerificationOut] | None = Field(default=None, description="one entry: its history")


class OpenAIModel(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    #: the gateway's view: loaded, loading, unloaded
    status: str


class ModelsOut(BaseModel):
    #: OpenAI's list shape: what ``model`` in a request may name (aliases, loaded and catalog GGUF models)
    object: str = "list"
    data: list[OpenAIModel]
    models: list[EntryOut]
    disk_bytes: int


class JobProgress(BaseModel):
    bytes_done: int
    bytes_total: int | None


class JobOut(BaseModel):
    id: str
    ref: str
    state: str = Field(description="queued | running | succeeded | failed")
    progress: JobProgress
    result: ResolvedOut | None
    error: ErrorDetail | None


class ReportOut(BaseModel):
    id: str
    ok: bool
    outcome: str
    expected: str | None
    actual: str | None
    local_path: str
    message: str


class PushOut(BaseModel):
    destination: str
    files: int
    bytes_uploaded: int
    bytes_skipped: int
    digest: str
    manifest_digest: str | None = None


class LeaseOut(BaseModel):
    lease_id: str
    model_id: str
    holder: str
    host: str | None = None
    pid: int | None = None
    created_ms: int | None = None
    expires_ms: int | None


class LeasesOut(BaseModel):
    leases: list[LeaseOut]


class ReleasedOut(BaseModel):
    released: str


class RemovedOut(BaseModel):
    removed: list[str]


class GcItem(BaseModel):
    kind: str
    what: str
    bytes: int


class GcOut(BaseModel):
    dry_run: bool
    removed: list[GcItem]
    bytes_freed: int


class StatusOut(BaseModel):
    status: str
    reason: str | None = None


class EngineOut(BaseModel):
    """An engine pool (``model-provisioner engines --json`` lists the same objects)."""

    pool_id: str
    engine: str
    model_id: str
    model_path: str
    digest: str
    state: str = Field(description="starting | ready | restarting | crashed | stopped")
    url: str
    pid: int | None
    restarts: int
    uptime_s: float
    engine_version: str | None
    log_path: str
    flags: list[str]
    error: str | None = None


class GatewayModelOut(BaseModel):
    """One model of the gateway (docs/engines.md, "One endpoint for every model")."""

    model: str
    model_id: str
    pool_id: str
    #: unloaded, loading, ready, draining
    state: str
    in_flight: int
    queue_depth: int
    last_used_ms: int | None
    keep_alive_s: float
    url: str | None = None
    memory: dict[str, int] | None = None
    #: why it has no engine: {reason: idle|evicted|crashed|failed|requested, at_ms, error}
    unloaded: dict[str, Any] | None = None


class EnginesOut(BaseModel):
    engines: list[EngineOut]
    gateway: list[GatewayModelOut]


class OpenAIAnswer(BaseModel):
    """What the model's engine answered, passed on as it is (OpenAI's shape; llama-server adds ``timings``)."""

    model_config = ConfigDict(extra="allow")
    object: str
    model: str | None = None
    usage: dict[str, Any] | None = None
