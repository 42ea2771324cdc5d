"""``engines install | installed | uninstall | push``, and the install ``up``/``run`` offer when no engine is
found (docs/engines.md, "Installing an engine")."""

from __future__ import annotations

import argparse
import sys
import time

from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.cli.context import provisioner
from model_provisioner.cli.output import PROG, emit, write_table
from model_provisioner.core.errors import EngineNotInstalled, InvalidInput
from model_provisioner.core.units import human_size
from model_provisioner.engines import artifacts, installed
from model_provisioner.engines.build import BuildOptions, BuildProgress
from model_provisioner.engines.install import InstallRequest, install
from model_provisioner.engines.installed import InstalledEngine
from model_provisioner.engines.pools import run_dir

#: without a terminal, one progress line this often (CI systems stop jobs that stay silent)
LINE_EVERY_S = 15.0
#: measured on the 2-core machine of docs/benchmarks.md ("Installing llama.cpp")
TYPICAL_BUILD = "about 8 minutes on 2 cores"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class BuildDisplay:
    """cmake's ``[NN%]`` as a bar on a terminal, a plain line every ``LINE_EVERY_S`` otherwise; the log path
    and how to resume are said once, at the start."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0
        self.announced = False

    def end_line(self) -> None:
        """A bar line left open (an error, Ctrl-C) is ended before anything else is written."""
        if self.tty and self.announced and not self.quiet:
            sys.stderr.write("\n")

    def __call__(self, p: BuildProgress) -> None:
        if self.quiet:
            return
        if not self.announced:
            self.announced = True
            how = "continuing the kept build tree" if p.resumed else "building llama-server"
            sys.stderr.write(
                f"{PROG}: {how}; log {p.log_path}; Ctrl-C keeps the build tree, the same command continues it\n"
            )
        left = f", ~{_clock(p.eta_s)} left" if p.eta_s is not None else ""
        percent = f"{p.percent:3d}%" if p.percent is not None else "    "
        if self.tty:
            filled = (p.percent or 0) * 30 // 100
            bar = "#" * filled + "-" * (30 - filled)
            sys.stderr.write(f"\r{p.step:<9} [{bar}] {percent} {_clock(p.elapsed_s)}{left}   ")
            sys.stderr.flush()
            return
        now = time.monotonic()
        if p.percent is None or now - self.last_line >= LINE_EVERY_S or p.percent == 100:
            self.last_line = now
            sys.stderr.write(f"{PROG}: {p.step} {percent.strip() or 'started'} after {_clock(p.elapsed_s)}{left}\n")


def _end_line(build: BuildOptions) -> None:
    if isinstance(build.progress, BuildDisplay):
        build.progress.end_line()


def _request(args: argparse.Namespace, prov: ModelProvisioner) -> InstallRequest:
    settings = prov.settings.engines
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        raise InvalidInput(f"--jobs {args.jobs} must be between 1 and 256")
    build = BuildOptions(
        jobs=args.jobs or settings.llamacpp.build_jobs,
        allow_package_installs=settings.allow_package_installs,
        progress=BuildDisplay(args.quiet or args.json),
    )
    return InstallRequest(
        kind=args.kind,
        source=args.source,
        digest=args.digest,
        subdir=args.subdir,
        flags=tuple(args.flag),
        from_ref=args.from_ref,
        build=build,
    )


def _said(args: argparse.Namespace, engine: InstalledEngine, took_s: float) -> None:
    r = engine.record
    emit(
        args,
        engine.as_json(),
        None if args.quiet else f"{engine.binary}",
    )
    if not args.quiet and not args.json:
        sys.stderr.write(
            f"{PROG}: installed {r.kind} {r.key[:12]} (llama-server {r.version}, {human_size(r.size_bytes)}, "
            f"{r.origin}) in {took_s:.0f} s; `{PROG} up MODEL` and `{PROG} run MODEL` use it\n"
        )


def cmd_install(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with provisioner(args) as prov:
        request = _request(args, prov)
        try:
            engine = install(prov, request)
        finally:
            _end_line(request.build)
    _said(args, engine, time.monotonic() - started)
    return 0


def cmd_installed(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        found = installed.installed(prov)
    if args.json:
        emit(args, {"engines": [e.as_json() for e in found]})
        return 0
    if not found:
        sys.stderr.write(f"{PROG}: no engines installed (`{PROG} engines install llamacpp`)\n")
        return 0
    rows = [("KIND", "ID", "VERSION", "SIZE", "ORIGIN", "BINARY")]
    rows += [
        (
            e.record.kind,
            e.record.key[:12],
            e.record.version or "-",
            human_size(e.record.size_bytes),
            e.record.origin,
            str(e.binary),
        )
        for e in found
    ]
    write_table(rows)
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        chosen = installed.select(prov, args.kind, args.id)
        removed = installed.uninstall(prov, run_dir(prov), chosen)
    ids = [e.record.key[:12] for e in removed]
    emit(args, {"uninstalled": ids}, "\n".join(f"uninstalled {args.kind} {i}" for i in ids))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        engine = installed.select(prov, args.kind, args.id)[0]
        pinned = artifacts.push(prov, engine, args.destination)
    emit(args, {"pushed": pinned, "id": engine.record.key[:12]}, pinned)
    if not args.quiet and not args.json:
        sys.stderr.write(f"{PROG}: on another machine: {PROG} engines install {args.kind} --from {pinned}\n")
    return 0


def offer_install(args: argparse.Namespace, prov: ModelProvisioner, missing: EngineNotInstalled) -> None:
    """``up``/``run`` found no engine: install it when ``engines.auto_install`` says so (``ask``: only in a
    terminal, after a yes), else re-raise ``missing`` (exit 2, naming ``engines install llamacpp``)."""
    policy = prov.settings.engines.auto_install
    if policy == "never" or (policy == "ask" and not (sys.stdin.isatty() and sys.stderr.isatty())):
        raise missing
    if policy == "ask":
        sys.stderr.write(
            f"{PROG}: no llama-server is installed. Build it now from the pinned, verified llama.cpp sources "
            f"({TYPICAL_BUILD})? [y/N] "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise missing
    settings = prov.settings.engines
    build = BuildOptions(
        jobs=settings.llamacpp.build_jobs,
        allow_package_installs=settings.allow_package_installs,
        progress=BuildDisplay(args.quiet or args.json),
    )
    started = time.monotonic()
    try:
        engine = install(prov, InstallRequest(build=build))
    finally:
        _end_line(build)
    if not args.quiet and not args.json:
        sys.stderr.write(
            f"{PROG}: installed llama-server {engine.record.version} in {time.monotonic() - started:.0f} s\n"
        )
