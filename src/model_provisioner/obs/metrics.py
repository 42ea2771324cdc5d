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
            "model_provisioner_catalog_verifications",
            "Verifications of model bytes, by result and reason",
            ["result", "reason"],
            registry=r,
        )
        # the unprefixed names of earlier releases, kept beside the prefixed ones (docs/api.md, "Metrics")
        self.verifications_legacy = Counter(
            "catalog_verifications",
            "Deprecated: model_provisioner_catalog_verifications",
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
        self.model_state = Gauge(
            "model_provisioner_model_state", "Catalog entries by lifecycle state", ["lifecycle"], registry=r
        )
        self.model_state_legacy = Gauge(
            "model_state", "Deprecated: model_provisioner_model_state", ["lifecycle"], registry=r
        )
        self._enable_gateway(r)
        self.enabled = True

    def _enable_gateway(self, r: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415  # heavy: prometheus_client, imported only when this path runs

        self.gw_load_seconds = Histogram(
            "model_provisioner_gateway_load_duration_seconds",
            "Time from a model's first request to its engine being ready (ensure, admission, start)",
            ["model"],
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
        )
        self.gw_ttft = Histogram(
            "model_provisioner_gateway_time_to_first_token_seconds",
            "Time from a request reaching the gateway to the engine's first response byte",
            ["model"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.gw_tokens_per_s = Histogram(
            "model_provisioner_gateway_generated_tokens_per_second",
            "Generated tokens per second of a completed request (as its engine reports it)",
            ["model"],
            registry=r,
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
        )
        self.gw_queue = Gauge(
            "model_provisioner_gateway_queue_depth", "Requests waiting for a model to load", ["model"], registry=r
        )
        self.gw_loaded = Gauge("model_provisioner_gateway_loaded_models", "Models with a running engine", registry=r)
        self.gw_unloads = Counter(
            "model_provisioner_gateway_unloads",
            "Models unloaded, by reason (idle, evicted, crashed, failed, requested)",
            ["model", "reason"],
            registry=r,
        )

    def gateway_queue(self, model: str, depth: int) -> None:
        if self.enabled:
            self.gw_queue.labels(model=model).set(depth)

    def gateway_loaded(self, model: str, seconds: float, loaded: int) -> None:
        if self.enabled:
            self.gw_load_seconds.labels(model=model).observe(seconds)
            self.gw_loaded.set(loaded)

    def gateway_unloaded(self, model: str, reason: str, loaded: int) -> None:
        if self.enabled:
            self.gw_unloads.labels(model=model, reason=reason).inc()
            self.gw_loaded.set(loaded)

    def gateway_request(self, model: str, ttft_s: float | None, tokens_per_s: float | None) -> None:
        if not self.enabled:
            return
        if ttft_s is not None:
            self.gw_ttft.labels(model=model).observe(ttft_s)
        if tokens_per_s is not None and tokens_per_s > 0:
            self.gw_tokens_per_s.labels(model=model).observe(tokens_per_s)

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
            self.verifications_legacy.labels(result=result, reason=reason).inc()

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
            self.model_state_legacy.labels(lifecycle=state).set(states.get(state, 0))
        self.cache_bytes.labels(kind="used").set(used_bytes)
        self.cache_bytes.labels(kind="limit").set(limit_bytes if limit_bytes is not None else 0)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest  # noqa: PLC0415  # heavy: prometheus_client, imported only when this path runs

        return bytes(generate_latest(self.registry)) if self.enabled else b""


METRICS = Metrics()
