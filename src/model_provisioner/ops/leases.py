"""Leases and pins: an engine using a model keeps eviction and ``rm`` away from it while its lease is live."""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from model_provisioner.core.errors import InvalidInput, LeaseHeld, NotFound
from model_provisioner.core.processes import start_time
from model_provisioner.core.refs import parse
from model_provisioner.core.units import now_ms
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.ops.cache import Cache
from model_provisioner.storage.catalog import Lease

log = logging.getLogger("model_provisioner")


def lease_is_live(lease: Lease, now: int | None = None) -> bool:
    now = now if now is not None else now_ms()
    if lease.expires_ms is not None and lease.expires_ms <= now:
        return False
    if lease.pid is not None and lease.host == socket.gethostname():
        return start_time(lease.pid) == lease.pid_start
    return True


def acquire_lease(
    prov: Cache, ref: Any, *, holder: str | None = None, pid: int | None = None, ttl_s: float | None = None
) -> Lease:
    model_id = parse(ref).id
    entry = prov.catalog.get(model_id)
    if entry is None or entry.lifecycle is not Lifecycle.ACTIVE:
        raise NotFound(f"{model_id} is not an Active model here; ensure it before leasing it")
    pid = pid if pid is not None else (os.getpid() if ttl_s is None else None)
    start = start_time(pid) if pid is not None else None
    if pid is not None and start is None:
        raise InvalidInput(f"process {pid} does not exist; a lease needs a live process (--pid) or a --ttl")
    now = now_ms()
    lease = Lease(
        lease_id=uuid.uuid4().hex[:16],
        model_id=model_id,
        holder=holder or f"pid {pid}",
        host=socket.gethostname(),
        created_ms=now,
        pid=pid,
        pid_start=start,
        expires_ms=now + int(ttl_s * 1000) if ttl_s else None,
    )
    prov.catalog.add_lease(lease)
    return lease


def live_leases(prov: Cache, model_id: str | None = None) -> list[Lease]:
    """Live leases; leases of dead processes and expired ones are dropped on the way."""
    now = now_ms()
    live = []
    for lease in prov.catalog.leases(model_id):
        if lease_is_live(lease, now):
            live.append(lease)
        else:
            prov.catalog.remove_lease(lease.lease_id)
            log.info("lease %s on %s expired (holder %s gone)", lease.lease_id, lease.model_id, lease.holder)
    return live


@contextmanager
def leased(prov: Cache, ref: Any, holder: str | None = None) -> Iterator[Lease]:
    lease = acquire_lease(prov, ref, holder=holder)
    try:
        yield lease
    finally:
        prov.catalog.remove_lease(lease.lease_id)


def check_removable(prov: Cache, model_id: str, pinned: bool, force: bool) -> None:
    if force:
        return
    if pinned:
        raise LeaseHeld(f"{model_id} is pinned; unpin it first (model-provisioner unpin {model_id}) or use --force")
    holders = live_leases(prov, model_id)
    if holders:
        who = "; ".join(f"{h.holder} ({describe_lease(h)}, lease {h.lease_id})" for h in holders)
        ends = " && ".join(ending_command(h) for h in holders)
        raise LeaseHeld(
            f"{model_id} is in use: leased by {who}; end {'it' if len(holders) == 1 else 'them'} "
            f"({ends}) or use --force"
        )


#: the holder an engine's supervisor writes on its lease (``engines/supervisor.py``)
ENGINE_HOLDER = re.compile(r"^engine pool ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?: \(starting\))?$")


def ending_command(lease: Lease) -> str:
    """The command that ends ``lease``: an engine's is stopped with its pool (releasing it would leave the
    engine running on a model that may then be removed); any other is released."""
    engine = ENGINE_HOLDER.match(lease.holder)
    if engine is not None:
        return f"model-provisioner down --pool {engine.group(1)}"
    return f"model-provisioner release {lease.lease_id}"


def describe_lease(lease: Lease, now: int | None = None) -> str:
    """``pid 4242 on host``, ``expires in 59m``: only what the lease has (never a Python ``None``)."""
    now = now if now is not None else now_ms()
    parts: list[str] = []
    if lease.pid is not None:
        parts.append(f"pid {lease.pid} on {lease.host}")
    if lease.expires_ms is not None:
        left = max(0, (lease.expires_ms - now) // 1000)
        parts.append(f"expires in {_duration_text(left)}")
    return ", ".join(parts) or "until released"


def _duration_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
