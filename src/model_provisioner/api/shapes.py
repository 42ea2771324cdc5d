"""One JSON shape per type, used by both the CLI (``--json``) and the HTTP API (docs/api.md)."""

from __future__ import annotations

from typing import Any

from model_provisioner.core.vocab import shown_lifecycle
from model_provisioner.storage.catalog import CatalogEntry, Lease, VerificationRecord
from model_provisioner.verify.results import shown_metadata


def entry_json(
    entry: CatalogEntry, verifications: list[VerificationRecord] | None = None, *, provisioning_now: bool
) -> dict[str, Any]:
    """A catalog entry as ``inspect --json`` and ``GET /v1/models/{id}`` show it (with its verification
    history when given; ``GET /v1/models`` lists entries without it). ``provisioning_now``: a process holds the
    entry's model lock (a ``Pending`` entry nobody provisions shows ``Interrupted``)."""
    out: dict[str, Any] = {
        "id": entry.id,
        "short_id": short_id(entry.digest),
        "ref": entry.ref,
        "scheme": entry.scheme,
        "local_path": entry.local_path,
        "lifecycle": shown_lifecycle(entry.lifecycle, entry.verification, provisioning_now),
        "digest": entry.digest,
        "size_bytes": entry.size_bytes,
        "format": entry.format,
        "verification": entry.verification,
        "expected_digest": entry.expected_digest,
        "strict": entry.strict,
        "pinned": entry.pinned,
        "last_verified_ms": entry.last_verified_ms,
        "created_ms": entry.created_ms,
        "last_used_ms": entry.last_used_ms,
        "metadata": shown_metadata(entry.metadata),
        "error": entry.error,
    }
    if verifications is not None:
        out["verifications"] = [verification_json(v) for v in verifications]
    return out


def short_id(digest: str | None) -> str | None:
    """The first 12 hex of the digest, as ollama and docker show an image (None before any byte is known)."""
    if not digest or ":" not in digest:
        return None
    return digest.split(":", 1)[1][:12]


def verification_json(record: VerificationRecord) -> dict[str, Any]:
    return {
        "ts_ms": record.ts_ms,
        "result": record.result,
        "reason": record.reason,
        "digest": record.digest,
        "bytes_hashed": record.bytes_hashed,
    }


def lease_json(lease: Lease) -> dict[str, Any]:
    return {
        "lease_id": lease.lease_id,
        "model_id": lease.model_id,
        "holder": lease.holder,
        "host": lease.host,
        "pid": lease.pid,
        "created_ms": lease.created_ms,
        "expires_ms": lease.expires_ms,
    }
