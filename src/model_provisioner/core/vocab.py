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
