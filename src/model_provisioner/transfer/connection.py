"""What an attempt, a stream and the range workers use of the engine (``TransferEngine`` is one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from model_provisioner.config.settings import TransferSettings
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.transfer.guard import ChunkGuard
from model_provisioner.transfer.types import Source, TransferOutcome, TransferSpec

if TYPE_CHECKING:
    import httpx


class Connection(Protocol):
    """What an attempt, a stream and the range workers use of the engine."""

    settings: TransferSettings
    store: BlobStore

    @property
    def client(self) -> httpx.Client: ...

    def open(self, source: Source, headers: Mapping[str, str]) -> tuple[httpx.Response, str, dict[str, str]]: ...

    def chunk_guard(self) -> ChunkGuard: ...

    def check_deadline(self) -> None: ...

    def empty(self, spec: TransferSpec) -> TransferOutcome: ...

    @property
    def deadline(self) -> tuple[float, str] | None: ...

    @deadline.setter
    def deadline(self, value: tuple[float, str] | None) -> None: ...
