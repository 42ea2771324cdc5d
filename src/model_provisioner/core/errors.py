"""The exception tree. Each class means one thing a caller can handle, and carries its CLI exit code.

Exit codes (docs/architecture.md, "Contracts"): 0 ok · 1 unexpected · 2 invalid input · 3 not found ·
4 verification failed · 5 denied by policy or offline · 6 transfer failed after retries · 7 out of disk
space · 8 timed out waiting (a lock, an engine that never became ready) · 9 engine failed (it
exited during start-up, refused the model, or could not be built).

Messages are one line, name the offending input and say what the user can do next.
"""

from __future__ import annotations

import os
from enum import IntEnum

from model_provisioner.core.redact import redact_text
from model_provisioner.core.vocab import ErrorCode, VerificationOutcome

#: the most characters of user input quoted in a message (then an ellipsis)
QUOTE_LIMIT = 200


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of user input for a message, cut at ``limit`` characters: a message stays one short line even
    for a 100 MB input."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"… ({len(text)} characters)"
    return repr(text)


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1
    INVALID_INPUT = 2
    NOT_FOUND = 3
    VERIFICATION_FAILED = 4
    DENIED = 5
    TRANSFER_FAILED = 6
    NO_SPACE = 7
    TIMED_OUT = 8
    ENGINE_FAILED = 9


class ProvisionerError(Exception):
    """Base of every error this library raises on purpose."""

    exit_code: ExitCode = ExitCode.UNEXPECTED
    #: short machine-readable code, used by the JSON error output and (later) the HTTP API
    code: ErrorCode = "unexpected"


class InvalidInput(ProvisionerError, ValueError):
    """The user gave us something malformed: a ref, a digest, a config file, a flag."""

    exit_code = ExitCode.INVALID_INPUT
    code: ErrorCode = "invalid_input"


class InvalidModelRef(InvalidInput):
    """A model reference that cannot be parsed. ``.ref`` keeps the offending input (redacted)."""

    code: ErrorCode = "invalid_ref"

    def __init__(self, ref: str, problem: str) -> None:

        self.ref = redact_text(ref)
        self.problem = problem
        super().__init__(f"invalid model reference {quote(self.ref)}: {problem}")


class InvalidDigest(InvalidInput):
    code: ErrorCode = "invalid_digest"

    def __init__(self, value: object, problem: str) -> None:
        self.value = value
        self.problem = problem
        super().__init__(f"invalid digest {quote(value)}: {problem}")


class ConfigError(InvalidInput):
    """A config file that cannot be used; names the file and the field."""

    code: ErrorCode = "invalid_config"

    def __init__(self, path: str, field: str | None, problem: str) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        where = f"{path}: field {field!r}" if field else path
        super().__init__(f"config {where}: {problem}")


class UnsupportedScheme(InvalidInput):
    """The ref parses, but this build cannot fetch its scheme yet."""

    code: ErrorCode = "unsupported_scheme"


class UnsupportedFormat(InvalidInput):
    """A model file in a format we refuse on purpose (e.g. legacy GGML)."""

    code: ErrorCode = "unsupported_format"


class NotFound(ProvisionerError):
    exit_code = ExitCode.NOT_FOUND
    code: ErrorCode = "not_found"


class VerificationFailed(ProvisionerError):
    """The bytes are not what they should be (digest mismatch, empty, corrupt model)."""

    exit_code = ExitCode.VERIFICATION_FAILED
    code: ErrorCode = "verification_failed"

    def __init__(self, message: str, *, reason: VerificationOutcome = "mismatch") -> None:
        self.reason = reason
        super().__init__(message)


class DigestMismatch(VerificationFailed):
    def __init__(self, subject: str, expected: str, actual: str, action: str) -> None:
        self.subject = subject
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"digest mismatch for {subject}: expected {expected}, got {actual}; {action}",
            reason="mismatch",
        )


class CorruptModel(VerificationFailed):
    def __init__(self, subject: str, problem: str) -> None:
        self.subject = subject
        super().__init__(f"{subject}: {problem}", reason="corrupt")


class PolicyDenied(ProvisionerError):
    exit_code = ExitCode.DENIED
    code: ErrorCode = "denied"


class OfflineError(PolicyDenied):
    code: ErrorCode = "offline"


class ReadOnlyCache(PolicyDenied):
    """The cache is read-only (an image layer, a read-only mount): it serves what it holds, nothing more."""

    code: ErrorCode = "read_only_cache"


class TransferFailed(ProvisionerError):
    exit_code = ExitCode.TRANSFER_FAILED
    code: ErrorCode = "transfer_failed"


class InsufficientSpace(ProvisionerError):
    exit_code = ExitCode.NO_SPACE
    code: ErrorCode = "no_space"

    def __init__(self, where: str, needed: int, available: int) -> None:
        self.needed = needed
        self.available = available
        super().__init__(
            f"not enough disk space in {where}: need {needed} bytes, {available} available; "
            "free space (e.g. `model-provisioner rm`) or use --cache-dir on a larger disk"
        )


class UnsafeCachePath(VerificationFailed):
    """A path inside the cache is not what we create there (a symlink, a FIFO, a file with other links)."""

    code: ErrorCode = "unsafe_cache_path"

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        super().__init__(
            f"refusing {self.path}: it {problem}; something other than model-provisioner put it in the cache. "
            "Remove it (and check who can write to the cache directory), then run the command again",
            reason="unsafe_path",
        )


class LockTimeout(ProvisionerError):
    """Waiting for a lock (another process provisioning the same model, a fetch slot, gc) took too long."""

    exit_code = ExitCode.TIMED_OUT
    code: ErrorCode = "lock_timeout"


class LeaseHeld(PolicyDenied):
    """A pinned model, or one an engine holds a live lease on, cannot be removed without force."""

    code: ErrorCode = "leased"


class ServerBusy(ProvisionerError):
    """The API's bound on concurrent synchronous downloads (or a model's request queue) is reached (HTTP 503
    with Retry-After)."""

    code: ErrorCode = "busy"

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InsufficientMemory(ProvisionerError):
    """A model's estimated memory does not fit beside what is loaded and the reserve (HTTP 507)."""

    exit_code = ExitCode.NO_SPACE
    code: ErrorCode = "insufficient_memory"


class Cancelled(TransferFailed):
    """The transfer was stopped (Ctrl-C, SIGTERM, a server shutting down); its partial file is kept."""

    code: ErrorCode = "cancelled"


class NotModified(ProvisionerError):
    """A conditional refresh found the source unchanged (HTTP 304): the cached copy stands."""

    code: ErrorCode = "not_modified"


class MissingExtra(InvalidInput):
    """An optional dependency group (an ``extra``) this feature needs is not installed."""

    code: ErrorCode = "missing_extra"


class MissingTool(InvalidInput):
    """A program a feature needs (an engine binary, cmake, a compiler) is not installed or not executable."""

    code: ErrorCode = "missing_tool"


class EngineNotInstalled(MissingTool):
    """No engine binary: none given, none on PATH, none installed (``engines install`` makes one)."""

    code: ErrorCode = "engine_not_installed"


class EngineFailed(ProvisionerError):
    """An engine exited during start-up, refused the model, or could not be built."""

    exit_code = ExitCode.ENGINE_FAILED
    code: ErrorCode = "engine_failed"


class EngineNotReady(ProvisionerError):
    """An engine kept running but never became ready within its timeout (it was stopped)."""

    exit_code = ExitCode.TIMED_OUT
    code: ErrorCode = "engine_not_ready"


class ModelChanged(VerificationFailed):
    """The model an engine pool serves no longer answers to the digest the pool was started on (checked
    before every start and restart): the pool stops (``failed``), it never serves other bytes."""

    code: ErrorCode = "model_changed"

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="changed")


class EngineBinaryChanged(VerificationFailed):
    """An engine binary is not what was trusted (built by us: its bytes; given by path: its fingerprint)."""

    code: ErrorCode = "engine_changed"

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="changed")
