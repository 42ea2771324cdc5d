"""The one place that maps an engine kind to its module (``kinds.py`` says what each provides)."""

from __future__ import annotations

from model_provisioner.config.engines import EngineKind
from model_provisioner.engines import llamacpp, triton
from model_provisioner.engines.kinds import EngineKindSpec
from model_provisioner.engines.state import check_engine_kind

KINDS: dict[EngineKind, EngineKindSpec] = {"llamacpp": llamacpp.KIND, "triton": triton.KIND}


def kind_of(name: str) -> EngineKindSpec:
    """The kind named ``name``; an unknown name is exit 2 naming the kinds there are."""
    return KINDS[check_engine_kind(name)]
