"""The table that maps a ref's scheme to the planner that turns it into a ``FetchPlan``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import UnsupportedScheme
from model_provisioner.core.refs import HfRef, ModelRef, OciRef, S3Ref, UrlRef
from model_provisioner.net.registry.client import RegistryClient
from model_provisioner.sources.hf import plan_hf
from model_provisioner.sources.https import plan_https
from model_provisioner.sources.oci import plan_oci
from model_provisioner.sources.plan import FetchPlan
from model_provisioner.sources.s3 import plan_s3


@dataclass(frozen=True)
class PlanRequest:
    """What a planner may use besides the ref: the sha256 the user pinned strictly (a source without its own
    digest enforces it while streaming), the file selection, and what a refresh compares with."""

    pinned_sha256: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    refresh: bool = False
    previous_metadata: dict[str, Any] | None = None
    #: read the signatures published beside the files (the signature policy checks them)
    signatures: bool = False
    #: clients the plan keeps open for the transfer (a registry session); the caller closes them
    closers: list[Any] = field(default_factory=list)


def _hf(ref: ModelRef, settings: Settings, request: PlanRequest) -> FetchPlan:
    assert isinstance(ref, HfRef)
    return plan_hf(ref, settings, include=request.include, exclude=request.exclude)


def _s3(ref: ModelRef, settings: Settings, request: PlanRequest) -> FetchPlan:
    assert isinstance(ref, S3Ref)
    return plan_s3(ref, settings, expected_sha256=request.pinned_sha256, signatures=request.signatures)


def _oci(ref: ModelRef, settings: Settings, request: PlanRequest) -> FetchPlan:
    assert isinstance(ref, OciRef)
    client = RegistryClient(ref.registry, settings)
    request.closers.append(client)
    return plan_oci(ref, settings, client, signatures=request.signatures)


def _https(ref: ModelRef, settings: Settings, request: PlanRequest) -> FetchPlan:
    assert isinstance(ref, UrlRef)
    return plan_https(
        ref,
        settings,
        expected_sha256=request.pinned_sha256,
        previous_metadata=request.previous_metadata,
        refresh=request.refresh,
    )


PLANNERS: dict[str, Callable[[ModelRef, Settings, PlanRequest], FetchPlan]] = {
    "hf": _hf,
    "s3": _s3,
    "oci": _oci,
    "https": _https,
    "http": _https,
}


def plan_origin(ref: ModelRef, settings: Settings, request: PlanRequest) -> FetchPlan:
    """The plan from the ref's own origin."""
    planner = PLANNERS.get(ref.scheme)
    if planner is None:
        raise UnsupportedScheme(f"{ref.id}: no fetcher for scheme {ref.scheme!r}")
    return planner(ref, settings, request)
