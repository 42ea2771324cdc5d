"""The HTTP API's request bodies, examples and error mapping (the routes are in ``routes_models`` and
``routes_cache``; the response schemas in ``responses``).

Request bodies refuse unknown fields (400 naming them); messages the library writes for the CLI name flags,
which ``in_api_terms`` rewrites into the request fields an API caller sets.
"""

from __future__ import annotations

import re

from pydantic import AliasChoices, BaseModel, Field

from model_provisioner.core.errors import ExitCode, InvalidInput
from model_provisioner.core.units import parse_duration
from model_provisioner.core.vocab import Engine

STATUS_BY_EXIT = {
    ExitCode.INVALID_INPUT: 400,
    ExitCode.NOT_FOUND: 404,
    ExitCode.VERIFICATION_FAILED: 422,
    ExitCode.DENIED: 403,
    ExitCode.TRANSFER_FAILED: 502,
    ExitCode.NO_SPACE: 507,
    ExitCode.TIMED_OUT: 503,
    ExitCode.ENGINE_FAILED: 502,
    ExitCode.UNEXPECTED: 500,
}
DIGEST_EXAMPLE = "sha256:a487953d63d5f43969f61720d4bda20aacbd3340d1a5f0060119e7b8dc1c73d8"
MODEL_EXAMPLE = {
    "id": "hf:TheOrg/Tiny-GGUF/tiny-Q4_K_M.gguf",
    "local_path": "/var/cache/models/gguf/TheOrg/Tiny-GGUF/tiny-Q4_K_M.gguf@a487953d63d5…",
    "digest": DIGEST_EXAMPLE,
    "size_bytes": 896,
    "lifecycle": "Active",
    "engine": "llamacpp",
    "verification": "source_verified",
    "from_cache": False,
    "bytes_fetched": 896,
    "metadata": {"format": "gguf", "ctx_max": 4096, "architecture": "llama", "revision": "7a52b909f6f8…"},
}
ERROR_EXAMPLE = {"error": {"code": "not_found", "message": "hf:org/repo/x.gguf is not in the catalog"}}


class StrictBody(BaseModel):
    """Request bodies refuse fields they do not know (400 naming them): a typo is never silently ignored."""

    model_config = {"extra": "forbid"}


class EnsureRequest(StrictBody):
    ref: str = Field(description="model reference: hf:org/repo/file.gguf, https://…, file:/abs (allowed roots)")
    expected_digest: str | None = Field(
        default=None,
        validation_alias=AliasChoices("expected_digest", "digest"),
        description="sha256:<64 hex>; strict unless strict=false (also accepted as `digest`, the CLI's spelling)",
    )
    strict: bool | None = None
    engine: Engine | None = None
    refresh: bool = False

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"ref": "hf:TheOrg/Tiny-GGUF:Q4_K_M", "expected_digest": DIGEST_EXAMPLE}]},
    }


class LeaseRequest(StrictBody):
    holder: str = Field(description="who uses the model, shown when rm is refused")
    ttl_s: float | None = Field(default=None, gt=0, le=30 * 86400, description="seconds; default 3600")
    ttl: str | None = Field(default=None, description="the CLI's duration syntax instead of ttl_s: 45s, 30m, 12h, 7d")

    def seconds(self) -> float:
        if self.ttl is not None and self.ttl_s is not None:
            raise InvalidInput("give ttl or ttl_s, not both")
        if self.ttl is None:
            return self.ttl_s if self.ttl_s is not None else 3600.0
        seconds = parse_duration(self.ttl)
        if not 0 < seconds <= 30 * 86400:
            raise InvalidInput(f"ttl {self.ttl!r} must be more than 0 and at most 30d")
        return seconds


class PushRequest(StrictBody):
    destination: str = Field(
        description="oci://registry/repo[:tag] or s3://bucket/prefix/; a trailing '/' is a mirror root "
        "(the location mirrors.models looks in)"
    )

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"destination": "oci://registry.internal/mirror/"}]},
    }


class GcRequest(StrictBody):
    max_size_bytes: int | None = Field(default=None, ge=0)
    dry_run: bool = False


#: the library's messages name CLI flags; through the API the same advice names the request fields
_CLI_TO_API = (
    ("pass --no-strict", 'send "strict": false'),
    ("--no-strict", '"strict": false'),
    ("or use --force", "or add ?force=true to the DELETE"),
    ("use --force", "add ?force=true to the DELETE"),
    ("pass --digest", 'send "expected_digest":'),
    ("--refresh", '"refresh": true'),
)


#: commands a message suggests, as the HTTP API's own requests
_COMMANDS_TO_API = (
    (re.compile(r"model-provisioner release (\S+?)(?=[ );,]|$)"), r"DELETE /v1/leases/\1"),
    (re.compile(r"model-provisioner down --pool (\S+?)(?=[ );,]|$)"), r"DELETE /v1/engines/\1"),
)


def in_api_terms(message: str) -> str:
    for flag, field_text in _CLI_TO_API:
        message = message.replace(flag, field_text)
    for command, request in _COMMANDS_TO_API:
        message = command.sub(request, message)
    return message
