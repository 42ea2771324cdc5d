"""Dedup-aware accounting: a blob shared by several ids is counted once; files registered in place count for
nothing (docs/cache-and-lifecycle.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from model_provisioner.obs.metrics import METRICS
from model_provisioner.ops.cache import Cache
from model_provisioner.storage.catalog import ListingRow

log = logging.getLogger("model_provisioner")


@dataclass
class Usage:
    logical_bytes: int  # sum of entry sizes (what ``ls`` lists)
    disk_bytes: int  # unique blobs, each counted once (what the cache really uses)
    entries: int
    blob_owners: dict[str, set[str]]
    blob_sizes: dict[str, int]


def usage(prov: Cache, rows: list[ListingRow] | None = None) -> Usage:
    rows = rows if rows is not None else prov.catalog.rows_for_listing()
    sets = prov.catalog.blobs_by_entry()
    owners: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    logical = 0
    for row in rows:
        model_id, size, blob = row.id, row.size_bytes, row.blob
        logical += size
        if blob:
            owners.setdefault(blob, set()).add(model_id)
            sizes[blob] = size
        for set_blob in sets.get(model_id, ()):
            owners.setdefault(set_blob, set()).add(model_id)
    missing = [b for b in owners if b not in sizes]
    for blob in missing:
        try:
            sizes[blob] = prov.store.blob_path(blob).stat().st_size
        except OSError:
            sizes[blob] = 0
    return Usage(logical, sum(sizes.values()), len(rows), owners, sizes)


def publish_cache_metrics(prov: Cache) -> None:
    """The cache gauges (entries by state, bytes used, the budget), from one catalog snapshot."""
    if not METRICS.enabled:
        return
    rows = prov.catalog.rows_for_listing()
    states: dict[str, int] = {}
    for row in rows:
        states[row.lifecycle] = states.get(row.lifecycle, 0) + 1
    METRICS.refresh_catalog(states, usage(prov, rows).disk_bytes, prov.settings.max_cache_bytes)
