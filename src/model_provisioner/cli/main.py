"""``model-provisioner`` (alias ``mprov``): parse, run one command, turn every error into one line on stderr and
its exit code (docs/architecture.md, "Contracts"; ``core.errors.ExitCode``). Never a traceback for a user
error; SIGTERM ends a command like Ctrl-C (transfers stop, partial downloads are kept)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import sys
from collections.abc import Sequence

from model_provisioner.cli.context import provisioner, setup_logging
from model_provisioner.cli.output import PROG, emit
from model_provisioner.cli.parser import build_engine_parser, build_parser
from model_provisioner.cli.startup import trim_unused_imports
from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import ExitCode, ProvisionerError
from model_provisioner.core.redact import redact_text
from model_provisioner.obs.metrics import METRICS
from model_provisioner.ops.usage import publish_cache_metrics

log = logging.getLogger("model_provisioner")


class Terminated(KeyboardInterrupt):
    """SIGTERM: ends a command like Ctrl-C (transfers stop, partials are kept), exit 143 (128 + 15)."""


def _interrupt(signum: int, frame: object) -> None:
    raise Terminated


def with_cache_dir(message: str, cache_dir: str | None) -> str:
    """The commands a message suggests, on the cache this command used: they run as printed."""
    if not cache_dir:
        return message
    option = f"--cache-dir {shlex.quote(cache_dir)} "
    return re.sub(rf"\b{re.escape(PROG)} (?!--cache-dir)", f"{PROG} {option}", message)


def main(argv: Sequence[str] | None = None) -> int:
    """``model-provisioner``."""
    return _run(build_parser(), argv)


def engine_main(argv: Sequence[str] | None = None) -> int:
    """``engine-provisioner --config FILE [--pool ID]``."""
    return _run(build_engine_parser(), argv)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    trim_unused_imports()
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    log_format = "text"
    metrics_file: str | None = None
    try:
        settings = Settings.from_env()
        log_format, metrics_file = settings.log_format, settings.metrics_textfile
    except ProvisionerError:
        pass  # reported below, when the command builds its provisioner
    setup_logging(args.quiet or args.json, args.verbose, log_format)
    try:
        if metrics_file:
            METRICS.enable()
        return int(args.func(args))
    except ProvisionerError as exc:
        message = with_cache_dir(redact_text(str(exc)), getattr(args, "cache_dir", None))
        sys.stderr.write(f"{PROG}: error: {message}\n")
        if getattr(args, "json", False):
            emit(args, {"error": {"code": exc.code, "exit_code": int(exc.exit_code), "message": message}})
        return int(exc.exit_code)
    except KeyboardInterrupt as exc:
        how, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        sys.stderr.write(f"{PROG}: {how}; anything partly downloaded is kept: the same command resumes it\n")
        return code
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if os.environ.get("MODEL_PROVISIONER_DEBUG"):
            raise
        sys.stderr.write(
            f"{PROG}: internal error: {type(exc).__name__}: {redact_text(str(exc))} "
            "(set MODEL_PROVISIONER_DEBUG=1 for a traceback and report it)\n"
        )
        return int(ExitCode.UNEXPECTED)
    finally:
        if metrics_file and METRICS.enabled:  # not when the server extra is missing (that error was reported)
            _write_metrics_textfile(args, metrics_file)


def _write_metrics_textfile(args: argparse.Namespace, path: str) -> None:
    """node_exporter's textfile collector: written atomically after each command."""
    from prometheus_client import write_to_textfile  # noqa: PLC0415  # heavy: prometheus_client (server extra)

    try:
        with provisioner(args) as prov:
            publish_cache_metrics(prov)
        write_to_textfile(path, METRICS.registry)
    except (OSError, ProvisionerError) as exc:
        log.warning("could not write the metrics textfile %s: %s", path, exc)
