"""One retry rule for every HTTP client we run (the transfer engine's streams and range workers, the registry
client): which answers are worth another attempt, and how long to wait before it: exponential backoff with
jitter, never shorter than a server's ``Retry-After`` (capped by ``transfer.retry_after_max_s``)."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from model_provisioner.config.settings import TransferSettings


def is_retryable_status(status: int) -> bool:
    """429 (too many requests) and every 5xx: the server may answer the same request later."""
    return status == 429 or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # noqa: PLC0415  # lazy: ~6 ms of start-up, and only a Retry-After date needs it

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    return parse_retry_after(headers.get("Retry-After"))


@dataclass(frozen=True)
class Backoff:
    base_s: float
    max_s: float
    retry_after_max_s: float

    @classmethod
    def of(cls, settings: TransferSettings) -> Backoff:
        return cls(settings.backoff_base_s, settings.backoff_max_s, settings.retry_after_max_s)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before attempt ``attempt + 1``: ``base * 2^(attempt-1)`` capped at ``max``, jittered to
        50-100 % (so that many clients do not retry in step), and at least what the server asked for."""
        delay: float = min(self.max_s, self.base_s * 2.0 ** (attempt - 1)) * (0.5 + random.random() / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_s))
        return delay

    def sleep(self, attempt: int, retry_after: float | None = None) -> float:
        delay = self.delay(attempt, retry_after)
        time.sleep(delay)
        return delay
