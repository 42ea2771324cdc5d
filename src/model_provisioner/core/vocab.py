"""The small shared vocabulary: lifecycle states, engines, layouts, verification outcomes and check results.

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
Layout = Literal["file", "gguf-split", "gguf-set", "transformers", "triton", "engine", "auto"]


#: how a verification ended (the catalog's ``verification``, the history's and the metric's ``reason``); a check
#: that failed on an error (a transfer, a policy) carries the error's code instead (``VerificationReason``)
VerificationOutcome = Literal[
    "verified",  # the bytes are the ones pinned
    "recorded",  # no digest given: the digest seen is recorded
    "source_verified",  # no digest given, every byte matched the source's own digest
    "mismatch_advisory",  # not the pinned bytes, the pin advisory: kept Active with a warning
    "mismatch",
    "corrupt",
    "empty",
    "changed",  # changed while or since it was hashed
    "unsupported",
    "unsigned",
    "signature",
    "unsafe_path",
    "unsafe_model",  # the safety lint refused it before an engine loaded it
    "missing",  # gone from where it was verified
    "interrupted",  # Ctrl-C or SIGTERM before it was complete
]


#: every error's machine-readable ``code`` (JSON errors, the HTTP API, a failed check's reason)
ErrorCode = Literal[
    "unexpected",
    "invalid_input",
    "invalid_ref",
    "invalid_digest",
    "invalid_config",
    "unsupported_scheme",
    "unsupported_format",
    "not_found",
    "verification_failed",
    "denied",
    "offline",
    "read_only_cache",
    "transfer_failed",
    "no_space",
    "insufficient_memory",
    "unsafe_cache_path",
    "lock_timeout",
    "leased",
    "busy",
    "cancelled",
    "not_modified",
    "missing_extra",
    "missing_tool",
    "engine_not_installed",
    "engine_failed",
    "engine_not_ready",
    "model_changed",
    "engine_changed",
]

#: the reason a check records: how it ended, or the code of the error that ended it
VerificationReason = VerificationOutcome | ErrorCode


class CheckResult(StrEnum):
    """The result of comparing bytes with what was expected: recorded in the catalog's verification history."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
