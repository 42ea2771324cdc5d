"""The one comparison of bytes with what was expected (docs/verification.md), and the rule for a request
that an existing catalog entry may answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import DigestMismatch, ProvisionerError, VerificationFailed
from model_provisioner.core.hashing import FileHash
from model_provisioner.core.vocab import CheckResult, Lifecycle, VerificationReason
from model_provisioner.storage.catalog import CatalogEntry


@dataclass
class Check:
    """The outcome of comparing bytes with what was expected (docs/verification.md)."""

    result: CheckResult
    reason: VerificationReason
    error: ProvisionerError | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def failed(cls, error: ProvisionerError, reason: VerificationReason | None = None) -> Check:
        if reason is None:
            reason = error.reason if isinstance(error, VerificationFailed) else error.code
        return cls(CheckResult.FAIL, reason, error)


def strict_mismatch(
    subject: str, expected: Digest | None, got: str | None, *, strict: bool, consequence: str
) -> DigestMismatch | None:
    """The one decision "these bytes are not the ones pinned, and the pin is strict": the error to raise (its
    message says ``consequence``), or None when they agree, when either digest is unknown, or when the pin is
    advisory (the caller warns instead). ``got`` is ``algo:hex`` in ``expected``'s algorithm."""
    if expected is None or got is None or got == str(expected) or not strict:
        return None
    return DigestMismatch(subject, str(expected), got, consequence)


def compare(subject: str, actual: FileHash, digest: Digest | None, *, strict: bool, owned: bool) -> Check:
    """No digest: recorded (a warning says how to pin it). Equal: verified. Different: strict fails (``owned``
    says whether the bytes are ours to remove), advisory warns and stays Active."""
    if digest is None:
        return Check(
            CheckResult.WARN,
            "recorded",
            warnings=[
                f"{subject}: no expected digest given; recorded {actual.sha256} "
                f"(pass --digest {actual.sha256} to verify future runs)"
            ],
        )
    got = actual.get(digest.algo)
    if got == digest:
        return Check(CheckResult.PASS, "verified")
    action = "removed it from the cache" if owned else "marked the entry Failed (your file was left untouched)"
    consequence = action + "; check the digest or the file, or pass --no-strict"
    mismatch = strict_mismatch(subject, digest, str(got), strict=strict, consequence=consequence)
    if mismatch is not None:
        return Check(CheckResult.FAIL, "mismatch", mismatch)
    return Check(
        CheckResult.WARN,
        "mismatch_advisory",
        warnings=[f"{subject}: digest mismatch (advisory): expected {digest}, got {got}; kept as Active"],
    )


def mark_source_verified(check: Check, source_verified: bool, digest: Digest | None) -> None:
    """No user digest, but every byte matched the source's own digest: verified, no advisory warning."""
    if digest is None and source_verified and check.reason == "recorded":
        check.result, check.reason = CheckResult.PASS, "source_verified"
        check.warnings[:] = [w for w in check.warnings if "no expected digest" not in w]


def still_answers(
    entry: CatalogEntry | None,
    digest: Digest | None,
    strict: bool,
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    signature: str | None = None,
) -> bool:
    """Whether a catalog entry answers this request, judged from the catalog alone (the caller then checks the
    files' fingerprint): Active; the same file selection when one is asked; no digest asked, or the one it was
    verified against; not an advisory mismatch for a strict request; signed the way ``signature`` requires
    (None: no signature required). The warm path, the re-verification in place and local directories all ask
    this one question (docs/verification.md, "Answering from the catalog")."""
    if entry is None or entry.lifecycle is not Lifecycle.ACTIVE:
        return False
    if (include or exclude) and (
        entry.metadata.get("include") != list(include) or entry.metadata.get("exclude") != list(exclude)
    ):
        return False  # a different file selection of the same repo
    if digest is not None and str(digest) not in (entry.digest, entry.expected_digest):
        return False
    if digest is not None and strict and entry.verification == "mismatch_advisory":
        return False
    return signature is None or entry.metadata.get("signature") == signature


def carried_pin(entry: CatalogEntry | None, digest: Digest | None, strict: bool) -> tuple[Digest | None, bool]:
    """A pin in force from an earlier run still applies when the caller does not repeat it: after it verified,
    and after the bytes then failed it (a mismatch keeps the pin, so changed bytes fail every time until they
    are restored, instead of being recorded as new on the second try). A digest that failed the first time it
    was given never becomes a pin: such a failure records no expected digest (local files and local
    directories alike)."""
    pin = prior_pin(entry)
    if digest is None and pin is not None and entry is not None:
        return Digest.parse(pin), entry.strict
    return digest, strict


def prior_pin(entry: CatalogEntry | None) -> str | None:
    """The pin an entry carries into a new verification (kept on the entry if that verification fails)."""
    if entry is not None and entry.expected_digest and entry.verification in ("verified", "mismatch"):
        return entry.expected_digest
    return None
