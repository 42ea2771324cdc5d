"""One protocol per engine kind (issue 27 item 5): everything ``up``, the supervisor and the HTTP API need to
know about an engine, in the kind's own module (``llamacpp.py``, ``triton.py``), dispatched in one place
(``dispatch.py``). A new engine (or the gateway of issue 25) plugs in with one module and one line there."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from model_provisioner.config.engine_run import EngineRun
from model_provisioner.config.engines import EngineKind
from model_provisioner.engines.binaries import BinaryIdentity
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.state import PoolState
from model_provisioner.verify.results import ResolvedModel


@dataclass(frozen=True)
class EngineLaunch:
    """How to start one engine on one verified model: what the state records and what the engine gets."""

    identity: BinaryIdentity
    #: the engine's command line: no secret in it
    argv: list[str]
    #: the flags as shown (secret values ``***``)
    flags: list[str]
    #: the engine's own variables beyond the allow-list (never written to a file)
    env: dict[str, str]
    version: str | None
    ready_timeout_s: float
    #: the models the engine must report ready (a Triton repository's)
    models: list[str] = field(default_factory=list)


class EngineKindSpec(Protocol):
    name: EngineKind
    #: flags a caller of the HTTP API may pass (tuning only: nothing that names a file or opens a port)
    api_safe_flags: frozenset[str]

    def launch(
        self, host: EngineHost, run: EngineRun, resolved: ResolvedModel, port: int, cache_root: Path
    ) -> EngineLaunch:
        """Check that ``resolved`` is this engine's format and may run, resolve the binary, build the argv."""
        ...

    def is_ready(self, state: PoolState) -> bool: ...

    def after_ready(self, state: PoolState, subject: str) -> None:
        """Checks once ready (every model loaded; metrics answer): raises ``EngineFailed`` when one fails."""
        ...

    def load_failures(self, log_path: Path) -> str:
        """What the engine's log says failed to load (empty when nothing): added to a start failure."""
        ...
