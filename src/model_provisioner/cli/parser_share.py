"""The grammar of the commands that move models between machines: ``push`` to a team mirror, ``export`` an
air-gapped bundle, ``import`` one (or adopt other caches' blobs)."""

from __future__ import annotations

import argparse
from typing import Any

from model_provisioner.cli.grouped_help import lazy


def add_share_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "push",
        parents=[common],
        help="publish a model to a team mirror (an OCI registry as ModelPack, or S3)",
    )
    p.add_argument("ref", metavar="ID", help="the model's id (or its ref)")
    p.add_argument(
        "destination",
        metavar="DEST",
        help="oci://registry/repo[:tag] or s3://bucket/prefix/; a trailing '/' on an oci:// or s3:// root "
        "places it where mirrors.models finds it",
    )
    p.add_argument(
        "--as-image", action="store_true", help="an OCI image (files under /models/): mountable as an image volume"
    )
    _signing_options(p, "it")
    p.set_defaults(func=lazy("share_commands", "cmd_push"))

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write verified models (and their signatures, BOMs, an engine) as an OCI layout for an air gap",
    )
    p.add_argument("refs", nargs="+", metavar="ID", help="the models' ids (or refs); each must be Active")
    p.add_argument("--to", required=True, metavar="DIR|FILE.tar", help="a new or empty directory, or a .tar file")
    p.add_argument("--engine", action="store_true", help="also carry the installed llama-server (engines install)")
    _signing_options(p, "each model")
    p.set_defaults(func=lazy("bundle_commands", "cmd_export"))

    p = sub.add_parser(
        "import",
        parents=[common],
        help="import a bundle from export, or adopt verified blobs from huggingface_hub and Ollama caches",
    )
    p.add_argument("bundle", nargs="?", metavar="DIR|FILE.tar", help="a bundle `export` wrote: every blob verified")
    p.add_argument("--hf-cache", metavar="DIR", help="huggingface_hub cache (default HF_HUB_CACHE or ~/.cache/...)")
    p.add_argument("--ollama", metavar="DIR", help="Ollama models dir (default OLLAMA_MODELS or ~/.ollama/models)")
    p.add_argument("--only", choices=["hf", "ollama"], help="import from one kind of cache only")
    p.set_defaults(func=lazy("bundle_commands", "cmd_import"))


def _signing_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--sign KEY`` and ``--sign-cert CERT,KEY,CA``: an OpenSSF model-signing signature (docs/fleet.md)."""
    p.add_argument("--sign", metavar="KEY", help=f"sign {what} (model-signing) with this elliptic-curve private key")
    p.add_argument("--sign-cert", metavar="CERT,KEY,CA", help=f"sign {what} with a certificate, its key and CA chain")
