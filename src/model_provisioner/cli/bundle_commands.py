"""``export`` and ``import`` of air-gapped bundles (docs/fleet.md, "Air-gapped bundles"); ``import`` without a
bundle adopts other caches' blobs (``cache_commands.cmd_import``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_provisioner.cli.context import provisioner
from model_provisioner.cli.output import PROG, emit
from model_provisioner.core.units import human_size


def cmd_export(args: argparse.Namespace) -> int:
    from model_provisioner.api.bundle import export_bundle  # noqa: PLC0415  # heavy: the bundle writer, push, signing, only for export
    from model_provisioner.verify.signing import Signer  # noqa: PLC0415  # with export, as above

    with provisioner(args) as prov:
        signer = Signer.parse(args.sign, args.sign_cert)
        report = export_bundle(prov, list(args.refs), Path(args.to), signer=signer, engine=args.engine)
    lines = [
        f"exported {m['id']} as {m['name']} ({m['signatures']} signature(s){', BOM' if m['bom'] else ''})"
        for m in report.models
    ]
    if report.engine:
        lines.append(f"exported the engine {report.engine}")
    moved = f"{human_size(report.bytes_linked)} linked, {human_size(report.bytes_copied)} copied"
    emit(args, report.as_dict(), "\n".join([*lines, f"bundle at {report.path} ({moved})"]))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    if args.bundle is None:
        from model_provisioner.cli.cache_commands import cmd_import as adopt  # noqa: PLC0415  # the other import

        return adopt(args)
    if args.hf_cache or args.ollama or args.only:
        from model_provisioner.core.errors import InvalidInput  # noqa: PLC0415  # only for this error

        raise InvalidInput("import takes a bundle or --hf-cache/--ollama/--only, not both")
    from model_provisioner.api.bundle import import_bundle  # noqa: PLC0415  # heavy: the pull flow, only for import

    with provisioner(args) as prov:
        report = import_bundle(prov, Path(args.bundle))
    lines = [
        f"imported {m['id']} ({m['digest']}{'; already here' if m['from_cache'] else ''}"
        + (f"; signature: {m['signature']}" if m["signature"] else "")
        + ")"
        for m in report.models
    ]
    if report.engine:
        lines.append(f"installed the engine {report.engine}")
    emit(args, report.as_dict(), "\n".join(lines))
    if not args.json and not args.quiet:
        sys.stderr.write(f"{PROG}: {len(report.models)} model(s) verified and registered from {report.path}\n")
    return 0
