"""``EngineServices``: what one attempt, its stream and its range workers use of the transfer engine
(``TransferEngine`` provides it): the settings, the blob store, the HTTP client, requests with redirects
followed by hand, the per-chunk guard and the between-requests check. The file's deadline is passed to the
guard and the check explicitly: nothing about one file is kept in the engine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from model_provisioner.config.settings import TransferSettings
from model_provisioner.storage.blobs import BlobStore
from model_provisioner.transfer.body_checks import ChunkGuard
from model_provisioner.transfer.types import FileDeadline, Source, TransferOutcome, TransferSpec

if TYPE_CHECKING:
    import httpx


class EngineServices(Protocol):
    """What an attempt, a stream and the range workers use of the engine."""

    settings: TransferSettings
    store: BlobStore

    @property
    def client(self) -> httpx.Client: ...

    def open(self, source: Source, headers: Mapping[str, str]) -> tuple[httpx.Response, str, dict[str, str]]: ...

    def chunk_guard(self, deadline: FileDeadline | None) -> ChunkGuard: ...

    def check_deadline(self, deadline: FileDeadline | None) -> None: ...

    def empty(self, spec: TransferSpec) -> TransferOutcome: ...
