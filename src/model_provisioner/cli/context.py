"""What every command starts from: logging as its flags ask, and the provisioner (settings from the
environment, the cache and the flags) it works on."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.cli.output import PROG
from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import InvalidInput
from model_provisioner.obs.logs import configure_logging


def setup_logging(quiet: bool, verbose: bool, log_format: str = "text") -> None:
    configure_logging(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING, log_format, PROG)


def provisioner_settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(
        cache_dir=args.cache_dir,
        offline=args.offline or None,
        require_signature=getattr(args, "require_signature", None),
        signature_public_key=getattr(args, "signature_key", None),
        hf_token=(getattr(args, "token", None) or "").strip() or None,
    )
    workers = getattr(args, "max_workers", None)
    if workers is not None:
        if not 1 <= workers <= 64:
            raise InvalidInput(f"--max-workers {workers}: give 1 to 64 connections")
        settings = replace(settings, transfer=replace(settings.transfer, connections=workers))
    return settings


def provisioner(args: argparse.Namespace) -> ModelProvisioner:
    return ModelProvisioner(provisioner_settings(args))
