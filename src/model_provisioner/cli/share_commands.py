"""Sharing what the cache holds: ``push`` to a team mirror (a registry or a bucket), ``serve`` the HTTP API."""

from __future__ import annotations

import argparse
import json
import sys

from model_provisioner.cli.context import provisioner
from model_provisioner.cli.output import emit
from model_provisioner.config.settings import Settings
from model_provisioner.core.extras import require_extra


def cmd_push(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        from model_provisioner.ops.push import push  # noqa: PLC0415  # heavy: the registry and S3 clients (~5 ms of start-up), only for push
        from model_provisioner.verify.signing import Signer  # noqa: PLC0415  # with push, as above

        signer = Signer.parse(args.sign, args.sign_cert)
        result = push(prov, args.ref, args.destination, as_image=args.as_image, sign=signer)
    human = (
        f"pushed {result.files} file(s) to {result.destination} "
        f"({result.bytes_uploaded} bytes uploaded, {result.bytes_skipped} already there); digest {result.digest}"
        + (f"; signed ({result.signature})" if result.signature else "")
    )
    emit(args, result.as_dict(), human)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env(cache_dir=args.cache_dir, offline=args.offline or None)
    require_extra("server", "the HTTP API (serve)")
    from model_provisioner.server.app import create_app, serve  # noqa: PLC0415  # heavy: fastapi, uvicorn

    if args.openapi:
        sys.stdout.write(json.dumps(create_app(settings).openapi(), indent=2, sort_keys=True) + "\n")
        return 0
    serve(args.host, args.port, settings)
    return 0
