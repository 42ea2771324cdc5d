"""Logging hygiene shared by everything: third-party HTTP loggers go through our redaction function."""

from __future__ import annotations

import logging

from .redact import redact_text

#: loggers of the HTTP clients we use (httpx; huggingface_hub's client) that print request URLs
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "huggingface_hub")


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with secrets (URL queries, credentials, tokens) redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_installed = False


def install_redaction() -> None:
    global _installed
    if _installed:
        return
    for name in (*HTTP_LOGGERS, "model_provisioner"):
        logging.getLogger(name).addFilter(RedactingFilter())
    _installed = True


# ================================================================================ correlation ids
import contextlib  # noqa: E402
import contextvars  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


def correlation_id() -> str:
    """The current request's correlation id (the HTTP API sets it from X-Correlation-Id), or a new one."""
    value = CORRELATION_ID.get()
    if value is None:
        value = uuid.uuid4().hex
        CORRELATION_ID.set(value)
    return value


# ======================================================================================== metrics
class Metrics:
    """Prometheus metrics, off (and prometheus_client not imported) until ``enable()``: the server enables them,
    the CLI only with a metrics textfile configured."""

    def __init__(self) -> None:
        self.enabled = False
        self.registry: Any = None

    def enable(self) -> None:
        if self.enabled:
            return
        from .extras import require_extra

        require_extra("server", "Prometheus metrics (serve, metrics_textfile)")
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double every counter for no scraping value
        self.registry = CollectorRegistry()
        r = self.registry
        self.verifications = Counter(
            "catalog_verifications",
            "Verifications of model bytes, by result and reason",
            ["result", "reason"],
            registry=r,
        )
        self.bytes_fetched = Counter(
            "model_provisioner_fetched_bytes", "Bytes received over the network", ["scheme"], registry=r
        )
        self.ensure_seconds = Histogram(
            "model_provisioner_ensure_duration_seconds",
            "Time to ensure a model, by scheme and outcome",
            ["scheme", "outcome"],
            registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
        )
        self.in_flight = Gauge(
            "model_provisioner_fetches_in_flight", "Ensures fetching or hashing right now", registry=r
        )
        self.cache_bytes = Gauge(
            "model_provisioner_cache_bytes", "Blob store bytes in use, and the budget", ["kind"], registry=r
        )
        self.model_state = Gauge("model_state", "Catalog entries by lifecycle state", ["lifecycle"], registry=r)
        self.enabled = True

    @contextlib.contextmanager
    def fetching(self) -> Any:
        if not self.enabled:
            yield
            return
        self.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight.dec()

    def verification(self, result: str, reason: str) -> None:
        if self.enabled:
            self.verifications.labels(result=result, reason=reason).inc()

    def ensured(self, scheme: str, outcome: str, seconds: float, bytes_fetched: int) -> None:
        if self.enabled:
            self.ensure_seconds.labels(scheme=scheme, outcome=outcome).observe(seconds)
            if bytes_fetched:
                self.bytes_fetched.labels(scheme=scheme).inc(bytes_fetched)

    def refresh_catalog(self, prov: Any) -> None:
        """Gauges that describe the whole cache, recomputed when scraped."""
        if not self.enabled:
            return
        from .lifecycle import usage

        rows = prov.catalog.rows_for_listing()
        counts = {"Pending": 0, "Active": 0, "Failed": 0}
        for row in rows:
            counts[row[1]] = counts.get(row[1], 0) + 1
        for state, n in counts.items():
            self.model_state.labels(lifecycle=state).set(n)
        self.cache_bytes.labels(kind="used").set(usage(prov, rows).disk_bytes)
        limit = prov.settings.max_cache_bytes
        self.cache_bytes.labels(kind="limit").set(limit if limit is not None else 0)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry)) if self.enabled else b""


METRICS = Metrics()


# ==================================================================================== audit logs
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


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message and any audit fields, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        audit_fields = getattr(record, "audit", None)
        if isinstance(audit_fields, dict):
            payload.update({k: redact_text(v) if isinstance(v, str) else v for k, v in audit_fields.items()})
        elif CORRELATION_ID.get() is not None:
            payload["correlation_id"] = CORRELATION_ID.get()
        return json.dumps(payload, sort_keys=True, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        message = redact_text(record.getMessage())
        audit_fields = getattr(record, "audit", None)
        if isinstance(audit_fields, dict):
            message += " " + " ".join(f"{k}={redact_text(str(v))}" for k, v in audit_fields.items())
        return f"{self.prog}: {record.levelname.lower()}: {message}"


def configure_logging(level: int, log_format: str = "text", prog: str = "model-provisioner") -> None:
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else TextFormatter(prog))
    root = logging.getLogger("model_provisioner")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(level)
    # the audit trail is written at INFO whatever the verbosity, when JSON logs are on
    logging.getLogger("model_provisioner.audit").setLevel(logging.INFO if log_format == "json" else level)
