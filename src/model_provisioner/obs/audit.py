"""The audit trail (one record per ensure, verify, push…) and the correlation id that ties a request's lines."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from typing import Any

from model_provisioner.obs.metrics import METRICS

CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


def correlation_id() -> str:
    """The current request's correlation id (the HTTP API sets it from X-Correlation-Id), or a new one."""
    value = CORRELATION_ID.get()
    if value is None:
        value = uuid.uuid4().hex
        CORRELATION_ID.set(value)
    return value


audit_log = logging.getLogger("model_provisioner.audit")

AUDIT_FIELDS = (
    "model_id",
    "model_ref",
    "digest",
    "bytes",
    "duration_ms",
    "policy_label",
    "correlation_id",
    "outcome",
    "from_cache",
)


def audit(event: str, **fields: Any) -> None:
    if not audit_log.isEnabledFor(logging.INFO):
        return  # the warm path pays nothing when nobody reads the audit trail
    fields.setdefault("correlation_id", correlation_id())
    audit_log.info(event, extra={"audit": {k: v for k, v in fields.items() if v is not None}})


def record_ensure(
    scheme: str,
    model_id: str,
    outcome: str,
    started: float,
    policy_label: str | None,
    *,
    digest: str | None = None,
    fetched: int = 0,
    from_cache: bool | None = None,
) -> None:
    """One ensure that ended (``outcome``: cached, fetched, or the error's code), started at ``started``
    (``time.monotonic()``): its metrics and its audit line."""
    seconds = time.monotonic() - started
    METRICS.ensured(scheme, outcome, seconds, fetched)
    audit(
        "ensure",
        model_id=model_id,
        model_ref=model_id,
        digest=digest,
        bytes=fetched,
        duration_ms=int(seconds * 1000),
        policy_label=policy_label,
        outcome=outcome,
        from_cache=from_cache,
    )
