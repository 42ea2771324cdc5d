"""The gateway's scheduler: which engine serves which model, loaded on demand and once, unloaded when idle or to
make room (docs/engines.md, "One endpoint for every model").

Each model the gateway serves is a ``Slot`` keyed by its pool id (``gw-`` + 12 hex of the model's id and engine
flags: one model with the same flags is one engine, whatever name a caller used for it). A slot's phase is a
type: ``Unloaded`` (never loaded, or why it was: idle, evicted, crashed, failed, requested), ``Loading`` (one
load runs; every other request for it waits on its event: single flight), ``Ready`` (an engine pool started by
``pools.up``: the model verified, the engine supervised) and ``Draining`` (chosen for eviction: no new request
reaches it; it is stopped when the last one ends).

Everything here runs on the server's event loop (one thread), so the slots need no lock; blocking work (ensure,
the memory estimate, ``pools.up``/``down``) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from model_provisioner.config.engine_run import EngineRun
from model_provisioner.config.gateway import GatewaySettings
from model_provisioner.core.errors import EngineFailed, InvalidInput, ProvisionerError, ServerBusy
from model_provisioner.core.redact import redact_text
from model_provisioner.core.units import now_ms
from model_provisioner.engines import pools
from model_provisioner.engines.admission import Loaded, available_memory, model_estimate, to_evict
from model_provisioner.engines.gateway_record import GatewayRecord
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.state import PoolState, truthful
from model_provisioner.engines.targets import Target
from model_provisioner.formats.memory import MemoryEstimate
from model_provisioner.obs.metrics import METRICS

log = logging.getLogger("model_provisioner")
UnloadReason = Literal["never", "idle", "evicted", "crashed", "failed", "requested"]
#: how often idle and crashed engines are looked for
SWEEP_S = 1.0
#: models the gateway remembers (loaded or not); past it, unloaded ones are forgotten
MAX_SLOTS = 1024


@dataclass
class Unloaded:
    reason: UnloadReason
    at_ms: int = 0
    error: ProvisionerError | None = None
    #: monotonic time before which a failed model answers its error again instead of loading
    retry_at: float = 0.0


@dataclass
class Loading:
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Ready:
    state: PoolState
    estimate: MemoryEstimate | None


@dataclass
class Draining:
    state: PoolState
    estimate: MemoryEstimate | None
    done: asyncio.Event = field(default_factory=asyncio.Event)


Phase = Unloaded | Loading | Ready | Draining


@dataclass
class Slot:
    target: Target
    phase: Phase = field(default_factory=lambda: Unloaded("never"))
    in_flight: int = 0
    waiting: int = 0
    last_used: float = 0.0
    last_used_ms: int = 0
    keep_alive_s: float = 300.0
    failures: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def holds_engine(self) -> bool:
        return isinstance(self.phase, (Loading, Ready, Draining))

    def as_json(self) -> dict[str, Any]:
        phase = self.phase
        out: dict[str, Any] = {
            "model": self.target.name,
            "model_id": self.target.model_id,
            "pool_id": self.target.pool,
            "state": type(phase).__name__.lower(),
            "in_flight": self.in_flight,
            "queue_depth": self.waiting,
            "last_used_ms": self.last_used_ms or None,
            "keep_alive_s": self.keep_alive_s,
        }
        if isinstance(phase, (Ready, Draining)):
            out["url"] = phase.state.url
            out["memory"] = phase.estimate.as_json() if phase.estimate else None
        if isinstance(phase, Unloaded) and phase.reason != "never":
            out["unloaded"] = {"reason": phase.reason, "at_ms": phase.at_ms}
            if phase.error is not None:
                out["unloaded"]["error"] = redact_text(str(phase.error))[:500]
        return out


@dataclass
class Ticket:
    """One request's hold on a loaded model: its engine's URL; ``Gateway.release`` ends it."""

    slot: Slot
    url: str


class Gateway:
    def __init__(
        self,
        host: EngineHost,
        settings: GatewaySettings,
        resolve: Callable[[str], Target],
        record: GatewayRecord | None = None,
    ) -> None:
        self.host = host
        self.record = record
        #: a model's last use changed since the record was written
        self.dirty = False
        self.settings = settings
        self.resolve = resolve
        self.slots: dict[str, Slot] = {}
        self.changed = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False

    # ------------------------------------------------------------------------------ requests
    async def acquire(self, name: str, keep_alive_s: float | None = None) -> Ticket:
        target = self.resolve(name)
        slot = self.slots.get(target.pool)
        if (slot is None or not slot.holds_engine) and target.name == target.model_id:
            # a model named by its id, with no flags of its own: whichever engine already serves it
            serving = (s for s in self.slots.values() if s.target.model_id == target.model_id and s.holds_engine)
            slot = next(serving, slot)
        if slot is None:
            self._forget_unloaded()
            slot = self.slots[target.pool] = Slot(target, keep_alive_s=self._keep_alive(target, None))
        if slot.in_flight + slot.waiting >= self.settings.max_queue:
            raise ServerBusy(
                f"model {name!r} already holds {self.settings.max_queue} requests (gateway.max_queue); retry later",
                retry_after_s=1,
            )
        slot.waiting += 1
        METRICS.gateway_queue(slot.target.name, slot.waiting)
        try:
            while True:
                phase = slot.phase
                if isinstance(phase, Ready):
                    break
                if isinstance(phase, (Loading, Draining)):
                    await phase.done.wait()
                    continue
                if phase.error is not None and time.monotonic() < phase.retry_at:
                    phase.error.retry_after_s = max(1.0, phase.retry_at - time.monotonic())  # type: ignore[attr-defined]
                    raise phase.error.with_traceback(None)
                loading = Loading()  # before the load starts: every request after this one waits for it
                slot.phase = loading
                self._spawn(self._load(slot, target, loading))
        finally:
            slot.waiting -= 1
            METRICS.gateway_queue(slot.target.name, slot.waiting)
        assert isinstance(phase, Ready)
        if target.digest is not None and target.digest != phase.state.digest:
            raise InvalidInput(
                f"model {name!r} is loaded as {phase.state.digest}, not the digest {target.digest} asked for; "
                f"unload it first (POST /v1/models/unload) or drop the digest"
            )
        slot.in_flight += 1
        slot.idle.clear()
        slot.keep_alive_s = self._keep_alive(target, keep_alive_s)
        self._touch(slot)
        return Ticket(slot, phase.state.url)

    def release(self, ticket: Ticket) -> None:
        slot = ticket.slot
        slot.in_flight -= 1
        self._touch(slot)
        if slot.in_flight == 0:
            slot.idle.set()
            if slot.keep_alive_s == 0 and isinstance(slot.phase, Ready):
                self._spawn(self._unload(slot, "idle"))

    def _forget_unloaded(self) -> None:
        """Callers may name any ref: past ``MAX_SLOTS`` models, those without an engine or a request are
        forgotten (oldest first; a failed one may then be tried again sooner than its back-off)."""
        idle = [k for k, s in self.slots.items() if isinstance(s.phase, Unloaded) and not s.waiting and not s.in_flight]
        for key in idle[: max(0, len(self.slots) - MAX_SLOTS + 1)]:
            del self.slots[key]

    def _keep_alive(self, target: Target, asked: float | None) -> float:
        if asked is not None:
            return asked
        return target.keep_alive_s if target.keep_alive_s is not None else self.settings.keep_alive_s

    def _touch(self, slot: Slot) -> None:
        slot.last_used = time.monotonic()
        slot.last_used_ms = now_ms()
        self.dirty = True

    # ------------------------------------------------------------------------------ load / unload
    async def unload(self, name: str) -> dict[str, Any]:
        target = self.resolve(name)
        slot = self.slots.get(target.pool)
        if slot is not None and isinstance(slot.phase, Ready):
            await self._unload(slot, "requested")
        elif slot is not None and isinstance(slot.phase, Draining):
            await slot.phase.done.wait()
        return slot.as_json() if slot is not None else {"model": name, "state": "unloaded"}

    async def _load(self, slot: Slot, target: Target, loading: Loading) -> None:
        started = time.monotonic()
        try:
            resolved = await asyncio.to_thread(self.host.ensure_present, target.ref, target.digest)
            need = await asyncio.to_thread(model_estimate, resolved, target.flags, self.host.settings.engines.llamacpp)
            await self._make_room(slot, need)
            run = EngineRun(pool=target.pool, flags=target.flags)
            request = pools.UpRequest(target.ref, target.digest, None, run, api=True)
            state, _ = await asyncio.to_thread(pools.up, self.host, request)
            slot.phase = Ready(state, need)
            slot.failures = 0
            METRICS.gateway_loaded(target.name, time.monotonic() - started, self._count_loaded())
            log.info("gateway: %s loaded in %.2f s at %s", target.name, time.monotonic() - started, state.url)
        except ProvisionerError as exc:
            slot.failures += 1
            backoff = min(self.settings.load_backoff_max_s, self.settings.load_backoff_s * 2 ** (slot.failures - 1))
            slot.phase = Unloaded("failed", now_ms(), exc, time.monotonic() + backoff)
            METRICS.gateway_unloaded(target.name, "failed", self._count_loaded())
            log.warning("gateway: %s failed to load (next try in %.0f s): %s", target.name, backoff, exc)
        except BaseException as exc:
            error = EngineFailed(f"model {target.name!r} could not be loaded: {type(exc).__name__}")
            slot.phase = Unloaded("failed", now_ms(), error, time.monotonic() + self.settings.load_backoff_s)
            raise
        finally:
            loading.done.set()
            self._notify()

    async def _make_room(self, slot: Slot, need: MemoryEstimate | None) -> None:
        """Within ``max_loaded`` (draining the least recently used) and within memory (unloading idle ones)."""
        while True:
            others = [s for s in self.slots.values() if s is not slot and s.holds_engine]
            draining = [s.phase for s in others if isinstance(s.phase, Draining)]
            if draining:
                await draining[0].done.wait()
                continue
            if len(others) >= self.settings.max_loaded:
                ready = sorted((s for s in others if isinstance(s.phase, Ready)), key=lambda s: s.last_used)
                if ready:
                    await self._unload(ready[0], "evicted")
                else:
                    await self._wait_changed()
                continue
            if need is None:
                return
            loaded = sorted((s for s in others if isinstance(s.phase, Ready)), key=lambda s: s.last_used)
            held = [
                Loaded(s.target.pool, s.phase.estimate, s.in_flight == 0)
                for s in loaded
                if isinstance(s.phase, Ready) and s.phase.estimate is not None
            ]
            victims = to_evict(slot.target.name, need, self.settings, available_memory(), held)
            if not victims:
                return
            for victim in victims:
                await self._unload(self.slots[victim], "evicted")

    async def _unload(self, slot: Slot, reason: UnloadReason) -> None:
        phase = slot.phase
        if not isinstance(phase, Ready):
            return
        draining = Draining(phase.state, phase.estimate)
        slot.phase = draining
        try:
            while slot.in_flight > 0:
                await slot.idle.wait()
            await asyncio.to_thread(pools.down, self.host, slot.target.pool)
        except ProvisionerError as exc:
            log.warning("gateway: stopping %s: %s", slot.target.name, exc)
        finally:
            slot.phase = Unloaded(reason, now_ms())
            draining.done.set()
            METRICS.gateway_unloaded(slot.target.name, reason, self._count_loaded())
            log.info("gateway: %s unloaded (%s)", slot.target.name, reason)
            self._notify()

    # ------------------------------------------------------------------------------ housekeeping
    async def sweep(self) -> None:
        """Unload idle models past their keep_alive and notice engines that died; until ``close``."""
        while not self.closing:
            now = time.monotonic()
            for slot in list(self.slots.values()):
                if not isinstance(slot.phase, Ready):
                    continue
                if slot.in_flight == 0 and 0 <= slot.keep_alive_s <= now - slot.last_used:
                    self._spawn(self._unload(slot, "idle"))
                else:
                    await self._check_alive(slot, slot.phase)
            if self.dirty:
                self._write_record()
            await asyncio.sleep(SWEEP_S)

    async def _check_alive(self, slot: Slot, phase: Ready) -> None:
        recorded = await asyncio.to_thread(pools.run_dir(self.host).recorded, slot.target.pool)
        current = truthful(recorded) if recorded is not None else None
        if (current is None or current.state in ("crashed", "failed", "stopped")) and slot.phase is phase:
            slot.phase = Unloaded("crashed", now_ms(), EngineFailed(f"the engine of {slot.target.name!r} stopped"))
            METRICS.gateway_unloaded(slot.target.name, "crashed", self._count_loaded())
            log.warning("gateway: the engine of %s is gone (%s)", slot.target.name, current and current.error)
            self._notify()

    async def crashed(self, ticket: Ticket) -> None:
        """A request could not reach its engine: look at the pool now rather than at the next sweep."""
        if isinstance(ticket.slot.phase, Ready):
            await self._check_alive(ticket.slot, ticket.slot.phase)

    async def close(self) -> None:
        """Stop every engine the gateway started (the server is stopping)."""
        self.closing = True
        for slot in list(self.slots.values()):
            if isinstance(slot.phase, Loading):
                await slot.phase.done.wait()
            await self._unload(slot, "requested")
        if self.record is not None:
            self.record.remove()

    def listing(self) -> list[dict[str, Any]]:
        return [slot.as_json() for slot in self.slots.values()]

    def _count_loaded(self) -> int:
        return sum(isinstance(s.phase, (Ready, Draining)) for s in self.slots.values())

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
        self._write_record()

    def _write_record(self) -> None:
        self.dirty = False
        if self.record is None:
            return
        try:
            self.record.write(self.listing())
        except (OSError, ProvisionerError) as exc:  # what `engines` shows is never worth a failed request
            log.warning("gateway: cannot write %s: %s", self.record.path, exc)

    async def _wait_changed(self) -> None:
        await self.changed.wait()
