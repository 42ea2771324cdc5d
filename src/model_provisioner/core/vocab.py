"""The small shared vocabulary: lifecycle states, engines, layouts and verification outcomes.

Every layer speaks these words; they are defined once, here (docs/architecture.md, "core").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Lifecycle(StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    FAILED = "Failed"


#: the lifecycle every front end shows (``ls``, ``inspect``, ``GET /v1/models``): the catalog's three, plus
#: ``Interrupted`` derived by ``shown_lifecycle``
ShownLifecycle = Literal["Pending", "Active", "Failed", "Interrupted"]


def shown_lifecycle(lifecycle: str, verification: str | None, provisioning_now: bool) -> ShownLifecycle:
    """A ``Pending`` entry nobody is provisioning now was interrupted (a SIGKILL), and so was a ``Failed`` one
    whose verification says so (Ctrl-C/SIGTERM mark it themselves): both show ``Interrupted``."""
    if (lifecycle == Lifecycle.PENDING and not provisioning_now) or (
        lifecycle == Lifecycle.FAILED and verification == "interrupted"
    ):
        return "Interrupted"
    if lifecycle == Lifecycle.PENDING:
        return "Pending"
    return "Active" if lifecycle == Lifecycle.ACTIVE else "Failed"


#: the engines a handoff can name (docs/architecture.md, "Contracts")
Engine = Literal["llamacpp", "vllm", "tgi", "triton"]
ENGINES: tuple[Engine, ...] = ("llamacpp", "vllm", "tgi", "triton")

#: how a model's files are laid out for its engine
Layout = Literal["file", "gguf-split", "gguf-set", "transformers", "triton", "auto"]


class CheckResult(StrEnum):
    """The result of comparing bytes with what was expected: recorded in the catalog's verification history."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
