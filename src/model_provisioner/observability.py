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
