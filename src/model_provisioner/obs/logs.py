"""Logging hygiene shared by everything: our records and third-party HTTP loggers go through redaction,
as text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from model_provisioner.core.redact import redact_text
from model_provisioner.obs.audit import CORRELATION_ID

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

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else TextFormatter(prog))
    root = logging.getLogger("model_provisioner")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(level)
    # the audit trail is written at INFO whatever the verbosity, when JSON logs are on
    logging.getLogger("model_provisioner.audit").setLevel(logging.INFO if log_format == "json" else level)
