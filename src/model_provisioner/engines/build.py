"""llama.cpp built from a verified source archive, once (``engines install llamacpp``, ``provisioning_mode:
source``).

The archive is any ref we provision (file, https, oci…) with its digest: it is fetched and verified like a
model. It is unpacked (regular files and directories only, nothing outside the tree) and built with cmake for
the CPU, with no network at build time (``-DLLAMA_USE_PREBUILT_UI=OFF``, no curl, no OpenSSL). The binary is
kept in the store under ``engines/llamacpp/<key>/llama-server``, the key being the sha256 of the source
digest, the subdirectory, the target and the build flags: a second install builds nothing, and two processes
asking at once build it once (a lock per key). The build unpacks a copy of the archive made while hashing it
(never the archive by path again), and the binary is recorded by its sha256 and trusted by it
(``binaries.py``).

The build tree ``engines/llamacpp/.<key>.build`` (0700, ours) outlives an interrupted or failed build: the
next install of the same key continues it (cmake and make are incremental), and only a finished build
removes it. Progress is cmake's ``[NN%]``, reported through a callback with the elapsed time and an
estimate. docs/engines.md, "Installing an engine".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Literal

from model_provisioner.core import failpoints
from model_provisioner.core.errors import CorruptModel, DigestMismatch, EngineFailed, InvalidInput, MissingTool
from model_provisioner.engines.binaries import BinaryIdentity, built, check_private_dir, record_binary, write_record
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
#: where a build's unpacked source records which archive it came from (a resumed build checks it)
_UNPACKED_MARK = "unpacked-from"
_PERCENT = re.compile(rb"^\[\s*(\d{1,3})%\]")

BuildStep = Literal["configure", "compile"]


@dataclass(frozen=True)
class SourceSpec:
    source: str
    digest: str | None = None
    #: where the llama.cpp tree sits inside the archive (``vendor/llama.cpp`` in the llama-cpp-python sdist),
    #: relative to the archive's single top-level directory when it has one
    subdir: str = ""
    flags: tuple[str, ...] = ()
    target: str = "llama-server"


@dataclass(frozen=True)
class BuildProgress:
    """One report of a running build: the step, cmake's percentage (compile only), the seconds since this
    install started building and, once the percentage moved, the seconds it should still take."""

    step: BuildStep
    percent: int | None
    elapsed_s: float
    eta_s: float | None
    log_path: str
    resumed: bool


ProgressSink = Callable[[BuildProgress], None]


def _ignore(_: BuildProgress) -> None:
    return None


@dataclass
class BuildOptions:
    jobs: int = 2
    allow_package_installs: bool = False
    #: called at the start of each step and at each new ``[NN%]``
    progress: ProgressSink = field(default=_ignore)


def build_key(source_digest: str, spec: SourceSpec) -> str:
    return key_of(source_digest, spec.subdir, spec.target, [*DEFAULT_CMAKE_FLAGS, *spec.flags])


def key_of(source_digest: str, subdir: str, target: str, flags: list[str]) -> str:
    """The store key of an engine: what it was built from and how (a pulled engine gets its builder's key)."""
    material = json.dumps([source_digest, subdir, target, flags])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def engine_home(fetcher: EngineHost, key: str) -> Path:
    return fetcher.store.root / "engines" / "llamacpp" / key


def built_binary(fetcher: EngineHost, spec: SourceSpec, options: BuildOptions | None = None) -> BinaryIdentity:
    """The binary built from ``spec``: from the store when it was built before (and is still what was built),
    else built now. A source without its digest is refused: the build runs whatever the archive holds."""
    opts = options or BuildOptions()
    if not spec.digest:
        raise InvalidInput(
            f"source {spec.source[:200]!r} has no digest: a build runs whatever the archive holds, so give its "
            "digest (--digest sha256:<64 hex>, or source_digest: in a config)"
        )
    archive = fetcher.ensure_present(spec.source, spec.digest)
    key = build_key(archive.digest, spec)
    home = engine_home(fetcher, key)
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
        check_build_tools(opts.allow_package_installs)
        _build(archive, spec, home, opts)
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
        f"{' '.join(DEBIAN_PACKAGES)}), set engines.allow_package_installs: true to let model-provisioner do it, "
        "or install a prebuilt engine with `engines install llamacpp --from oci://…`"
    )


def build_tree(home: Path) -> Path:
    return home.parent / f".{home.name}.build"


def build_log(home: Path) -> Path:
    return home.parent / f"{home.name}.build.log"


def _prepare_tree(archive: ResolvedModel, spec: SourceSpec, work: Path) -> tuple[Path, bool]:
    """The unpacked source in ``work``: kept from an interrupted build of the same archive (resumed), else
    unpacked now from a copy made while hashing (a swap of the archive after ``ensure`` builds nothing)."""
    mark = work / _UNPACKED_MARK
    if os.path.lexists(work):
        check_private_dir(work)  # a build tree is trusted only if it is ours and nobody else can write it
        try:
            resumed = mark.read_text() == archive.digest and (work / "src").is_dir()
        except OSError:
            resumed = False
        if resumed:
            return _source_dir(work / "src", spec.subdir, archive.id), True
        shutil.rmtree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(mode=0o700)
    os.chmod(work, 0o700)
    copy = verified_copy(Path(archive.local_path), archive.digest, work / "source.archive", archive.id)
    try:
        tree = unpack_source(copy, work / "src", spec.subdir, archive.id)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    copy.unlink()
    mark.write_text(archive.digest)
    return tree, False


def _build(archive: ResolvedModel, spec: SourceSpec, home: Path, opts: BuildOptions) -> None:
    work = build_tree(home)
    log_path = build_log(home)
    started = time.monotonic()
    cpu_before = _children_cpu()
    tree, resumed = _prepare_tree(archive, spec, work)
    build_dir = work / "build"
    flags = [*DEFAULT_CMAKE_FLAGS, *spec.flags]
    if opts.progress is _ignore:  # nobody shows progress (provisioning_mode: source): say it in the log
        log.warning("building %s from %s; this takes minutes, once; log %s", spec.target, archive.id, log_path)
    report = _Reporter(opts.progress, started, str(log_path), resumed)
    with os.fdopen(open_log(log_path, truncate=not resumed), "ab") as out:
        out.write(f"=== {'resumed' if resumed else 'started'} {time.strftime('%Y-%m-%dT%H:%M:%SZ')}\n".encode())
        report.step("configure")
        _run(["cmake", "-S", str(tree), "-B", str(build_dir), *flags], out, log_path, report)
        configured = time.monotonic()
        report.step("compile")
        _run(["cmake", "--build", str(build_dir), "--target", spec.target, "-j", str(opts.jobs)], out, log_path, report)
        compiled = time.monotonic()
    produced = next((p for p in (build_dir / "bin" / spec.target, build_dir / spec.target) if p.is_file()), None)
    if produced is None:
        raise EngineFailed(f"the build finished but produced no {spec.target}; see {log_path}")
    staged = work / "out"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    shutil.copyfile(produced, staged / spec.target)
    binary_sha256, fingerprint = record_binary(staged / spec.target)
    record = {
        "source": archive.id,
        "source_digest": archive.digest,
        "subdir": spec.subdir,
        "target": spec.target,
        "flags": flags,
        "seconds": round(compiled - started, 1),
        "configure_seconds": round(configured - started, 1),
        "compile_seconds": round(compiled - configured, 1),
        "cpu_seconds": round(_children_cpu() - cpu_before, 1),
        "resumed": resumed,
        "binary_sha256": binary_sha256,
        "binary_fingerprint": fingerprint,
    }
    write_record(staged, record)
    os.chmod(staged, 0o755)  # ours alone, whatever a shared cache's umask
    shutil.rmtree(home, ignore_errors=True)
    os.rename(staged, home)
    shutil.rmtree(work, ignore_errors=True)  # only a finished build drops its tree
    log.info("built %s in %.0f s: %s", spec.target, time.monotonic() - started, home / spec.target)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _Reporter:
    """Turns cmake's output into ``BuildProgress``: the estimate is the rate of this run's percentage moves
    (a resumed build starts high and must not look instant)."""

    def __init__(self, sink: ProgressSink, started: float, log_path: str, resumed: bool) -> None:
        self.sink, self.started, self.log_path, self.resumed = sink, started, log_path, resumed
        self.current: BuildStep = "configure"
        self.percent: int | None = None
        self.first: tuple[float, int] | None = None

    def step(self, step: BuildStep) -> None:
        self.current, self.percent = step, None
        self._send(None)

    def line(self, raw: bytes) -> None:
        found = _PERCENT.match(raw)
        if found is None or self.current != "compile":
            return
        percent = min(100, int(found.group(1)))
        if percent == self.percent:
            return
        now = time.monotonic()
        if self.first is None:
            self.first = (now, percent)
        self.percent = percent
        t0, p0 = self.first
        eta = (now - t0) * (100 - percent) / (percent - p0) if percent > p0 else None
        self._send(eta)

    def _send(self, eta: float | None) -> None:
        elapsed = time.monotonic() - self.started
        self.sink(BuildProgress(self.current, self.percent, elapsed, eta, self.log_path, self.resumed))


def _run(cmd: list[str], out: IO[bytes], log_path: Path, report: _Reporter) -> None:
    """One build command, its output appended to the log and read for ``[NN%]``; interrupted, the command is
    waited for (it got the same SIGINT from the terminal) so the tree is left as make leaves it."""
    out.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            out.write(raw)
            report.line(raw)
        out.flush()
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    if code != 0:
        tail = read_log_tail(log_path, 8192).decode("utf-8", "replace").strip().splitlines()[-8:]
        raise EngineFailed(
            f"llama.cpp {report.current} failed (exit {code}); the build tree is kept and the same install "
            f"continues it; log {log_path}; last lines: " + " | ".join(tail)
        )


def verified_copy(source: Path, digest: str, dest: Path, subject: str) -> Path:
    """Copy ``source`` to ``dest`` while hashing it; the copy is used only when it has ``digest``."""
    with open(source, "rb") as src:
        return verified_copy_from(src, digest, dest, subject)


def verified_copy_from(src: BinaryIO, digest: str, dest: Path, subject: str) -> Path:
    """``verified_copy`` from an open file (one opened by the cache's rules)."""
    algo, _, expected = digest.partition(":")
    hasher = hashlib.new(algo)
    with open(dest, "xb") as out:
        while chunk := src.read(1 << 20):
            hasher.update(chunk)
            out.write(chunk)
    if hasher.hexdigest() != expected:
        dest.unlink()
        raise DigestMismatch(
            subject,
            digest,
            f"{algo}:{hasher.hexdigest()}",
            "the archive changed after it was verified; nothing was built from it",
        )
    return dest


def unpack_source(archive: Path, dest: Path, subdir: str, subject: str) -> Path:
    """Unpack a source archive (tar, tar.gz, tar.xz…): regular files, directories and links that stay inside
    the tree; returns the directory holding ``CMakeLists.txt``."""
    if ".." in Path(subdir).parts or Path(subdir).is_absolute():
        raise InvalidInput(f"source subdir {subdir[:200]!r} must be a relative path inside the archive")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths, .., devices, links out of the tree
    except (tarfile.TarError, OSError) as exc:
        raise CorruptModel(subject, f"not a readable source archive: {exc}") from None
    return _source_dir(dest, subdir, subject)


def _source_dir(dest: Path, subdir: str, subject: str) -> Path:
    tops = list(dest.iterdir())
    base = tops[0] if len(tops) == 1 and tops[0].is_dir() else dest
    tree = (base / subdir) if subdir else base
    if not (tree / "CMakeLists.txt").is_file():
        raise InvalidInput(
            f"{subject}: no CMakeLists.txt at {subdir or 'the top of the archive'}; give the llama.cpp tree "
            "inside it with --subdir (vendor/llama.cpp in the llama-cpp-python sdist)"
        )
    return tree
