"""Prometheus metrics (the ``server`` extra), off and not imported until enabled."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from model_provisioner.core.extras import require_extra


class Metrics:
    """Prometheus metrics, off (and prometheus_client not imported) until ``enable()``: the server enables them,
    the CLI only with a metrics textfile configured."""

    def __init__(self) -> None:
        self.enabled = False
        self.registry: Any = None

    def enable(self) -> None:
        if self.enabled:
            return
        require_extra("server", "Prometheus metrics (serve, metrics_textfile)")
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics  # noqa: PLC0415  # heavy: prometheus_client, imported only when this path runs

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

    def refresh_catalog(self, states: Mapping[str, int], used_bytes: int, limit_bytes: int | None) -> None:
        """Gauges that describe the whole cache (entries by lifecycle state, bytes used, the budget), set from
        a catalog snapshot when the metrics are scraped."""
        if not self.enabled:
            return
        for state in ("Pending", "Active", "Failed", *states):
            self.model_state.labels(lifecycle=state).set(states.get(state, 0))
        self.cache_bytes.labels(kind="used").set(used_bytes)
        self.cache_bytes.labels(kind="limit").set(limit_bytes if limit_bytes is not None else 0)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest  # noqa: PLC0415  # heavy: prometheus_client, imported only when this path runs

        return bytes(generate_latest(self.registry)) if self.enabled else b""


METRICS = Metrics()
