"""Engine binaries we built are trusted by their bytes, never by their name (docs/engines.md, "Built engines").

A source build lands in ``engines/llamacpp/<key>/``: the binary (0555) and ``build.json`` (0444, with the
binary's sha256 and its stat fingerprint), in a directory created by us and writable by nobody else (0755,
whatever the shared cache's umask). The key is computable from a public digest, and ``engines/`` is
group-writable in a shared cache, so before any exec:
- the directory, ``build.json`` and the binary must be owned by us (or root) and writable by no one else,
  reached without a symlink;
- the binary's fingerprint must be the recorded one, else it is re-hashed and must have the recorded sha256.
A binary given by path (``--binary``, the settings, PATH) is the operator's choice: its fingerprint is taken
at ``up`` and must still hold at every restart (an upgraded binary is picked up by the next ``up``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from model_provisioner.core.errors import EngineBinaryChanged, UnsafeCachePath
from model_provisioner.storage.safefs import check_plain_dir, open_in_cache, write_atomic

_READ = 1 << 20


@dataclass(frozen=True)
class BinaryIdentity:
    path: str
    #: what ``stat`` said when it was trusted: size, mtime, ctime, inode
    fingerprint: str
    #: set for binaries we built: the bytes they must have
    sha256: str | None = None


def fingerprint_of(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"


def check_ours(path: Path | str, st: os.stat_result) -> None:
    """Owned by us or root, writable by nobody else."""
    if st.st_uid not in (os.getuid(), 0):
        raise UnsafeCachePath(path, f"belongs to uid {st.st_uid}, not us: a built engine is trusted only if we made it")
    if st.st_mode & 0o022:
        mode = stat.filemode(st.st_mode)
        raise UnsafeCachePath(path, f"is writable by others (mode {mode}): not trusted as a built engine")


def check_private_dir(path: Path) -> None:
    st = check_plain_dir(path)
    if st is not None:
        check_ours(path, st)


def sha256_of_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _READ, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def read_record(home: Path | str) -> dict[str, object]:
    """``build.json`` of an engine directory, read only if the directory and the file are ours alone."""
    record_path = Path(home) / "build.json"
    check_private_dir(Path(home))
    fd = open_in_cache(record_path, os.O_RDONLY)
    try:
        check_ours(record_path, os.fstat(fd))
        record = json.loads(os.read(fd, _READ) or b"{}")
    except ValueError:
        raise UnsafeCachePath(record_path, "is not a build record") from None
    finally:
        os.close(fd)
    if not isinstance(record, dict):
        raise UnsafeCachePath(record_path, "is not a build record")
    return record


def built(home: Path, target: str) -> BinaryIdentity | None:
    """The built binary in ``home``, checked; None when nothing was built there yet."""
    if not os.path.lexists(home / "build.json"):
        return None
    record = read_record(home)
    sha256 = record.get("binary_sha256")
    if not isinstance(sha256, str):
        return _adopt(home, target, record)
    identity = BinaryIdentity(str(home / target), str(record.get("binary_fingerprint", "")), sha256)
    return check_before_exec(identity)


def _adopt(home: Path, target: str, record: dict[str, object]) -> BinaryIdentity:
    """A build from before binaries were recorded, in a directory only we can write: its binary is hashed
    once and recorded (nobody else could have changed it there)."""
    path = home / target
    fd = open_in_cache(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        check_ours(path, st)
        identity = BinaryIdentity(str(path), fingerprint_of(st), sha256_of_fd(fd))
    finally:
        os.close(fd)
    write_record(home, {**record, "binary_sha256": identity.sha256, "binary_fingerprint": identity.fingerprint})
    return identity


def write_record(home: Path, record: dict[str, object]) -> None:
    """``build.json``, read-only, replacing the old one."""
    write_atomic(home / "build.json", json.dumps(record, indent=2, sort_keys=True).encode(), mode=0o444)


def record_binary(path: Path) -> tuple[str, str]:
    """(sha256, fingerprint) of a binary we just built, made read-only and executable first."""
    os.chmod(path, 0o555)
    fd = open_in_cache(path, os.O_RDONLY)
    try:
        return sha256_of_fd(fd), fingerprint_of(os.fstat(fd))
    finally:
        os.close(fd)


def check_before_exec(identity: BinaryIdentity) -> BinaryIdentity:
    """The binary still is what was trusted; returns it with its current fingerprint."""
    if identity.sha256 is None:
        try:
            st = os.stat(identity.path)
        except OSError as exc:
            raise EngineBinaryChanged(f"engine binary {identity.path} is gone ({exc.strerror})") from None
        if fingerprint_of(st) != identity.fingerprint:
            raise EngineBinaryChanged(
                f"engine binary {identity.path} changed since the pool started; start the pool again to use it"
            )
        return identity
    fd = open_in_cache(identity.path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        check_ours(identity.path, st)
        now = fingerprint_of(st)
        if now != identity.fingerprint and sha256_of_fd(fd) != identity.sha256:
            raise EngineBinaryChanged(
                f"built engine {identity.path} no longer has the bytes that were built (sha256:{identity.sha256}); "
                "not run: remove its directory and build it again"
            )
    finally:
        os.close(fd)
    return BinaryIdentity(identity.path, now, identity.sha256)


def given(path: str) -> BinaryIdentity:
    """A binary given by path: its fingerprint now."""
    return BinaryIdentity(path, fingerprint_of(os.stat(path)))
