"""Signing a model for ``push --sign`` with OpenSSF model-signing, and the staged tree both signing and
checking a published signature use (docs/fleet.md, "Signed pushes").

A pushed model's files are stored as blobs under their digests; model-signing signs a directory. Both sides
therefore stage the same tree: a private directory of symbolic links to the files (never hard links: a link
would change the inode's ctime, and with it the fingerprint the cache trusts the file by; nor the user's own
files' metadata), each at its path in the model, ``model.sig`` at the top left out (it is a signature, never
signed). model-signing follows the links (``allow_symlinks``) and names each file by its path in the tree, so
what is signed is the set of (path, sha256) pairs, whichever machine stages them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import InvalidInput, ProvisionerError
from model_provisioner.core.extras import require_extra
from model_provisioner.core.paths import check_relative_path
from model_provisioner.core.redact import redact_text

SIGNATURE_FILE = "model.sig"


@dataclass(frozen=True)
class Signer:
    """An elliptic-curve private key (PEM), with its signing certificate and chain when signing by certificate."""

    private_key: Path
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()

    @classmethod
    def parse(cls, key: str | None, cert: str | None) -> Signer | None:
        """``--sign KEY`` or ``--sign-cert CERT,KEY,CA[,…]`` (exit 2 naming the file that cannot be read)."""
        if key and cert:
            raise InvalidInput("give --sign KEY or --sign-cert CERT,KEY,CA, not both")
        if cert:
            parts = [p for p in cert.split(",") if p]
            if len(parts) < 3:
                raise InvalidInput(
                    "--sign-cert takes CERT,KEY,CA[,…] (the signing certificate, its private key and the chain up to "
                    f"the CA a verifier trusts; PEM files, comma-separated), got {cert[:200]!r}"
                )
            signer = cls(Path(parts[1]), Path(parts[0]), tuple(Path(p) for p in parts[2:]))
        elif key:
            signer = cls(Path(key))
        else:
            return None
        for path in (signer.private_key, *([signer.certificate] if signer.certificate else []), *signer.chain):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise InvalidInput(f"the signing file {str(path)[:200]!r} cannot be read: {exc.strerror}") from None
        require_extra("signing", "push --sign")
        return signer


@contextlib.contextmanager
def staged_model(files: list[tuple[str, Path]], parent: Path, name: str) -> Iterator[Path]:
    """A private directory ``<tmp>/<name>`` holding ``files`` at their paths; removed on leaving."""
    parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix="signing-", dir=parent))
    root = holder / (re.sub(r"[^A-Za-z0-9._-]+", "_", name.rsplit("/", 1)[-1])[:100] or "model")
    try:
        root.mkdir()
        for rel, source in files:
            check_relative_path(rel, name)
            if rel == SIGNATURE_FILE:
                continue
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.abspath(source), target)
        yield root
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def staged_hashing(config: Any, signature: Path) -> Any:
    """model-signing's hashing of a staged tree: the links followed, the signature file left out."""
    return config.set_ignored_paths(paths=[signature], ignore_git_paths=True).set_allow_symlinks(True)


def sign_files(files: list[tuple[str, Path]], parent: Path, name: str, signer: Signer) -> bytes:
    """A model-signing signature (a sigstore bundle, JSON) over ``files`` as they are on disk now."""
    try:
        from model_signing import hashing, signing  # noqa: PLC0415  # heavy: model-signing, imported only when signing
    except ImportError as exc:  # pragma: no cover - the dependency is declared
        raise ProvisionerError(
            f"signing needs model-signing: pip install 'model-provisioner[signing]' ({exc})"
        ) from exc
    config = signing.Config()  # type: ignore[no-untyped-call]
    what = signer.certificate or signer.private_key
    try:
        if signer.certificate is not None:
            config.use_certificate_signer(
                private_key=signer.private_key, signing_certificate=signer.certificate, certificate_chain=signer.chain
            )
        else:
            config.use_elliptic_key_signer(private_key=signer.private_key)
    except (ValueError, TypeError, OSError) as exc:  # not a PEM, a key of the wrong kind, a password-protected key
        detail = redact_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
        raise InvalidInput(f"signing with {str(what)[:200]!r} failed: {detail}") from None
    with staged_model(files, parent, name) as root:
        signature = root.parent / "signature.json"
        config.set_hashing_config(staged_hashing(hashing.Config(), signature))  # type: ignore[no-untyped-call]
        try:
            config.sign(root, signature)
        except (ValueError, TypeError) as exc:  # a certificate that is not for the key
            detail = redact_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
            raise InvalidInput(f"signing with {str(what)[:200]!r} failed: {detail}") from None
        return signature.read_bytes()
