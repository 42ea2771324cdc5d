"""``provisioning_mode: source``: llama.cpp built from a verified source archive, once.

The archive is any ref we provision (file, https, oci…) with its digest: it is fetched and verified like a
model. It is unpacked (regular files and directories only, nothing outside the tree) and built with cmake for
the CPU, with no network at build time (``-DLLAMA_USE_PREBUILT_UI=OFF``, no curl, no OpenSSL). The binary is
kept in the store under ``engines/llamacpp/<key>/llama-server``, the key being the sha256 of the source
digest, the subdirectory, the target and the build flags: a second ``up`` builds nothing, and two processes
asking at once build it once (a lock per key). The build unpacks a copy of the archive made while hashing it
(never the archive by path again), and the binary is recorded by its sha256 and trusted by it
(``binaries.py``). docs/engines.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from model_provisioner.core import failpoints
from model_provisioner.core.errors import CorruptModel, DigestMismatch, EngineFailed, InvalidInput, MissingTool
from model_provisioner.engines.binaries import BinaryIdentity, built, record_binary, write_record
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.process import open_log, read_log_tail
from model_provisioner.storage.locks import FileLock
from model_provisioner.verify.results import ResolvedModel

log = logging.getLogger("model_provisioner")

#: CPU, self-contained, nothing downloaded while building
DEFAULT_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DGGML_CUDA=OFF",
)
TOOLS: dict[str, tuple[str, ...]] = {
    "cmake": ("cmake",),
    "a C++ compiler (c++ or g++)": ("c++", "g++", "clang++"),
    "make or ninja": ("make", "ninja"),
}
DEBIAN_PACKAGES = ("cmake", "g++", "make")


@dataclass(frozen=True)
class SourceSpec:
    source: str
    digest: str | None = None
    #: where the llama.cpp tree sits inside the archive (``vendor/llama.cpp`` in the llama-cpp-python sdist),
    #: relative to the archive's single top-level directory when it has one
    subdir: str = ""
    flags: tuple[str, ...] = ()
    target: str = "llama-server"


def build_key(source_digest: str, spec: SourceSpec) -> str:
    material = json.dumps([source_digest, spec.subdir, spec.target, [*DEFAULT_CMAKE_FLAGS, *spec.flags]])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def built_binary(
    fetcher: EngineHost, spec: SourceSpec, *, jobs: int = 2, allow_package_installs: bool = False
) -> BinaryIdentity:
    """The binary built from ``spec``: from the store when it was built before (and is still what was built),
    else built now. A source without its digest is refused: the build runs whatever the archive holds."""
    if not spec.digest:
        raise InvalidInput(
            f"source {spec.source[:200]!r} has no source_digest: a build runs whatever the archive holds, so give "
            "its digest (source_digest: sha256:<64 hex>)"
        )
    archive = fetcher.ensure_present(spec.source, spec.digest)
    key = build_key(archive.digest, spec)
    home = fetcher.store.root / "engines" / "llamacpp" / key
    found = built(home, spec.target)
    if found is not None:
        return found
    fetcher.store.ensure_layout()
    lock = FileLock(fetcher.store.locks_dir / f"engine-build-{key}.lock", f"the build of {spec.target} ({key[:12]})")
    lock.acquire(timeout_s=3 * 3600)
    try:
        found = built(home, spec.target)
        if found is not None:
            return found  # another process built it while we waited
        failpoints.failpoint("engine_build.locked")
        check_build_tools(allow_package_installs)
        _build(archive, spec, home, jobs)
        found = built(home, spec.target)
        if found is None:
            raise EngineFailed(f"the build of {spec.target} left no build record in {home}")
        return found
    finally:
        lock.release()


def check_build_tools(allow_package_installs: bool) -> None:
    """cmake, a C++ compiler and make/ninja; missing ones are one error listing what to install (installed
    only when the settings allow package installs)."""
    missing = [what for what, names in TOOLS.items() if not any(shutil.which(n) for n in names)]
    if not missing:
        return
    if allow_package_installs and shutil.which("apt-get") and os.geteuid() == 0:
        log.warning("installing %s to build llama.cpp (allow_package_installs is on)", " ".join(DEBIAN_PACKAGES))
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES],
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
        if done.returncode == 0:
            return
        log.error("apt-get install failed: %s", done.stderr.strip()[-300:])
    raise MissingTool(
        f"building llama.cpp from source needs {', '.join(missing)}; install them (Debian/Ubuntu: apt-get install "
        f"{' '.join(DEBIAN_PACKAGES)}), set allow_package_installs: true to let model-provisioner do it, or give "
        "a llama-server binary with --binary"
    )


def _build(archive: ResolvedModel, spec: SourceSpec, home: Path, jobs: int) -> None:
    work = home.parent / f".{home.name}.build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log_path = home.parent / f"{home.name}.build.log"
    started = time.monotonic()
    try:
        # the bytes that were verified, copied while hashing: a swap of the archive after ``ensure`` builds nothing
        copy = verified_copy(Path(archive.local_path), archive.digest, work / "source.archive", archive.id)
        tree = unpack_source(copy, work / "src", spec.subdir, archive.id)
        build_dir = work / "build"
        flags = [*DEFAULT_CMAKE_FLAGS, *spec.flags]
        log.warning("building %s from %s (%s); this takes minutes, once", spec.target, archive.id, archive.digest)
        with os.fdopen(open_log(log_path, truncate=True), "w") as out:
            _run(["cmake", "-S", str(tree), "-B", str(build_dir), *flags], out, log_path, "configure")
            _run(["cmake", "--build", str(build_dir), "--target", spec.target, "-j", str(jobs)], out, log_path, "build")
        produced = next((p for p in (build_dir / "bin" / spec.target, build_dir / spec.target) if p.is_file()), None)
        if produced is None:
            raise EngineFailed(f"the build finished but produced no {spec.target}; see {log_path}")
        staged = work / "out"
        staged.mkdir()
        shutil.copyfile(produced, staged / spec.target)
        binary_sha256, fingerprint = record_binary(staged / spec.target)
        record = {
            "source": archive.id,
            "source_digest": archive.digest,
            "subdir": spec.subdir,
            "target": spec.target,
            "flags": flags,
            "seconds": round(time.monotonic() - started, 1),
            "binary_sha256": binary_sha256,
            "binary_fingerprint": fingerprint,
        }
        write_record(staged, record)
        os.chmod(staged, 0o755)  # ours alone, whatever a shared cache's umask
        shutil.rmtree(home, ignore_errors=True)
        os.rename(staged, home)
        log.warning("built %s in %.0f s: %s", spec.target, time.monotonic() - started, home / spec.target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def verified_copy(source: Path, digest: str, dest: Path, subject: str) -> Path:
    """Copy ``source`` to ``dest`` while hashing it; the copy is used only when it has ``digest``."""
    algo, _, expected = digest.partition(":")
    hasher = hashlib.new(algo)
    with open(source, "rb") as src, open(dest, "xb") as out:
        while chunk := src.read(1 << 20):
            hasher.update(chunk)
            out.write(chunk)
    if hasher.hexdigest() != expected:
        raise DigestMismatch(
            subject,
            digest,
            f"{algo}:{hasher.hexdigest()}",
            "the archive changed after it was verified; nothing was built from it",
        )
    return dest


def _run(cmd: list[str], out: IO[str], log_path: Path, step: str) -> None:
    done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = read_log_tail(log_path, 8192).decode("utf-8", "replace").strip().splitlines()[-8:]
        raise EngineFailed(f"llama.cpp {step} failed (exit {done.returncode}); last lines: " + " | ".join(tail))


def unpack_source(archive: Path, dest: Path, subdir: str, subject: str) -> Path:
    """Unpack a source archive (tar, tar.gz, tar.xz…): regular files, directories and links that stay inside
    the tree; returns the directory holding ``CMakeLists.txt``."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths, .., devices, links out of the tree
    except (tarfile.TarError, OSError) as exc:
        raise CorruptModel(subject, f"not a readable source archive: {exc}") from None
    tops = [p for p in dest.iterdir()]
    base = tops[0] if len(tops) == 1 and tops[0].is_dir() else dest
    tree = (base / subdir) if subdir else base
    if ".." in Path(subdir).parts or Path(subdir).is_absolute():
        raise InvalidInput(f"source_subdir {subdir!r} must be a relative path inside the archive")
    if not (tree / "CMakeLists.txt").is_file():
        raise InvalidInput(
            f"{subject}: no CMakeLists.txt at {subdir or 'the top of the archive'}; set source_subdir to the "
            "llama.cpp tree inside it (vendor/llama.cpp in the llama-cpp-python sdist)"
        )
    return tree
