"""Optional signature verification with sigstore's ``model-signing`` (OpenSSF Model Signing).

With ``require_signature`` (settings) or ``ensure --require-signature``, a model becomes Active only if a
``model-signing`` signature over its files verifies with the configured public key
(``signature_public_key``, PEM; elliptic-curve keys as ``model_signing sign key`` makes, or a CA certificate:
then a signature by a certificate chaining up to it verifies). Where the
signature lives:

- a directory model (local, or the view of a multi-file remote model): ``model.sig`` inside it (it is part
  of the files that are fetched and stored, and excluded from what it signs);
- a local single file ``m.gguf``: ``m.gguf.sig`` beside it.

No signature, a signature by another key, or any file that differs from what was signed is a
``VerificationFailed`` (exit 4; reason ``unsigned`` or ``signature``) and the model is not Active.
``model-signing`` is imported only when a signature is required.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from model_provisioner.core.errors import InvalidInput, ProvisionerError, VerificationFailed
from model_provisioner.core.extras import require_extra
from model_provisioner.core.redact import redact_text
from model_provisioner.verify.signing import SIGNATURE_FILE, staged_hashing, staged_model

if TYPE_CHECKING:
    from model_provisioner.config.settings import Settings


def signature_path(model_path: Path) -> Path:
    return model_path / SIGNATURE_FILE if model_path.is_dir() else model_path.with_name(model_path.name + ".sig")


def trusted_keys(settings: Settings) -> list[str]:
    """The public keys a signature may verify with: ``signatures.keys`` and ``signature_public_key``."""
    keys = list(settings.signatures.keys)
    if settings.signature_public_key and settings.signature_public_key not in keys:
        keys.append(settings.signature_public_key)
    return keys


def check_signature_setup(settings: Settings) -> None:
    """Before anything is provisioned: the extra is installed and the key is there (exit 2, one line naming
    the extra or the flag; no entry changes state)."""
    keys = trusted_keys(settings)
    if not keys:
        raise InvalidInput(
            "a signature is required (--require-signature, require_signature or the signature policy) but no "
            "public key is given: pass --signature-key PEM (or set signatures.keys in the settings)"
        )
    for key in keys:
        try:
            with open(key, "rb"):
                pass
        except OSError as exc:
            raise InvalidInput(
                f"the signature key {key!r} (--signature-key / signatures.keys) cannot be read: {exc.strerror}"
            ) from None

    require_extra("signing", "signature checks (--require-signature)")


_DIGEST_REPR = re.compile(r"Digest\(algorithm='(\w+)', digest_value=(b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")\)")


def _readable(detail: str) -> str:
    """model-signing prints ``Digest(algorithm='sha256', digest_value=b'\\xe3FC…')``: show ``sha256:<hex>``."""

    def hexed(match: re.Match[str]) -> str:
        literal = match.group(2)
        for _ in range(3):  # the library nests reprs: a bytes repr inside a str repr inside a list repr
            try:
                raw = ast.literal_eval(literal)
            except (ValueError, SyntaxError):
                return match.group(0)
            if not isinstance(raw, bytes):
                return match.group(0)
            if b"\\x" not in raw and not raw.startswith(b"\\"):
                return f"{match.group(1)}:{raw.hex()}"
            literal = "b'" + raw.decode("latin-1").replace("'", "\\'") + "'"
        return match.group(0)

    return _DIGEST_REPR.sub(hexed, detail)


def verify_signature(settings: Settings, model_path: Path, subject: str) -> str:
    """Verify ``model_path`` (a file or a directory) against its signature with any trusted key; returns what
    the entry records (the key set, by digest)."""
    check_signature_setup(settings)
    signature = signature_path(model_path)
    if not signature.is_file():
        raise VerificationFailed(
            f"{subject}: unsigned: no signature at {signature}; sign it with `model_signing sign key` or drop "
            "--require-signature",
            reason="unsigned",
        )
    return _verify_with_trusted_keys(settings, model_path, signature, subject)


def verify_bundles(
    settings: Settings, files: list[tuple[str, Path]], staging_parent: Path, bundles: list[bytes], subject: str
) -> str:
    """Verify the model made of ``files`` ([(path in the model, file)]) against signatures published beside
    it (OCI referrers, an S3 mirror's signature): any one verifying with a trusted key is enough."""
    check_signature_setup(settings)
    failures = []
    with staged_model(files, staging_parent, subject) as root:
        for number, bundle in enumerate(bundles, 1):
            signature = root.parent / f"signature-{number}.json"
            signature.write_bytes(bundle)
            try:
                return _verify_with_trusted_keys(settings, root, signature, subject, staged=True)
            except VerificationFailed as exc:
                failures.append(str(exc).removeprefix(f"{subject}: "))
    raise VerificationFailed(f"{subject}: {'; '.join(failures)[:1200]}", reason="signature")


def _verify_with_trusted_keys(
    settings: Settings, model_path: Path, signature: Path, subject: str, *, staged: bool = False
) -> str:
    try:
        from model_signing import hashing, verifying  # noqa: PLC0415  # heavy: model-signing, imported only when this path runs
    except ImportError as exc:  # pragma: no cover - the dependency is declared
        raise ProvisionerError(
            f"signature checks need model-signing: pip install 'model-provisioner[signing]' ({exc})"
        ) from None
    failures = []
    for key in trusted_keys(settings):
        try:
            verifier = verifying.Config()  # type: ignore[no-untyped-call]
            hasher = hashing.Config()  # type: ignore[no-untyped-call]
            if _is_certificate(key):  # a CA: signatures by certificates chaining up to it verify
                verifier.use_certificate_verifier(certificate_chain=[key])
            else:
                verifier.use_elliptic_key_verifier(public_key=key)
            if staged:  # a tree of links to the files (verify/signing.py)
                verifier.set_hashing_config(staged_hashing(hasher, signature))
            else:
                verifier.set_hashing_config(hasher.set_ignored_paths(paths=[signature], ignore_git_paths=True))
            verifier.verify(model_path, signature)
            return signature_label(settings)
        except Exception as exc:  # ValueError for a mismatch; the library's own types for malformed bundles
            detail = redact_text(_readable(str(exc).splitlines()[0]))[:600] if str(exc) else type(exc).__name__
            failures.append(f"key {key}: {detail}")
    raise VerificationFailed(
        f"{subject}: signature verification failed with {'; '.join(failures)[:900]}", reason="signature"
    )


def _is_certificate(path: str) -> bool:
    with open(path, "rb") as pem:
        return b"-----BEGIN CERTIFICATE-----" in pem.read(1 << 16)


def signature_label(settings: Settings) -> str:
    """What an entry records once verified: the trusted key set (by the digests of its key files), so that
    another key set in the settings means checking again."""
    digests = []
    for key in trusted_keys(settings):
        try:
            st = Path(key).stat()
        except OSError:
            return "model-signing key (unreadable)"
        digests.append(_label(key, st.st_mtime_ns, st.st_size))
    if len(digests) == 1:
        return f"model-signing, key sha256:{digests[0]}"
    combined = hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()[:16]
    return f"model-signing, {len(digests)} keys sha256:{combined}"


@functools.lru_cache(maxsize=8)
def _label(key: str, _mtime_ns: int, _size: int) -> str:
    return hashlib.sha256(Path(key).read_bytes()).hexdigest()[:16]
