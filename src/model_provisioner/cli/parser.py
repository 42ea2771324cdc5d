"""The command line's grammar: the commands and their options (docs/architecture.md, "Contracts")."""

from __future__ import annotations

import argparse
from typing import Any

from model_provisioner.cli.grouped_help import EXIT_CODES, Commands, lazy
from model_provisioner.cli.output import PROG
from model_provisioner.cli.parser_share import add_share_commands
from model_provisioner.config.engines import ENGINE_KINDS
from model_provisioner.core.version import VERSION
from model_provisioner.core.vocab import ENGINES


def global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--cache-dir",
        default=default,
        metavar="DIR",
        help="cache directory (env MODEL_PROVISIONER_CACHE; default $XDG_CACHE_HOME/models, ~/.cache/models)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="serve from the catalog only (env MODEL_PROVISIONER_OFFLINE=1, HF_HUB_OFFLINE=1)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="errors only on stderr",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="more detail on stderr",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="machine-readable output on stdout",
    )


def build_parser() -> argparse.ArgumentParser:
    return build_with_summaries()[0]


def build_with_summaries() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser, and each listed command's one-line summary (``completion`` writes them into scripts)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s [-h] [--version] [--cache-dir DIR] [--offline] [-q] [-v] [--json] COMMAND ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    global_options(parser, suppress=False)
    # the commands are listed by group in the description below, not one flat list
    commands = Commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help=argparse.SUPPRESS))
    common = argparse.ArgumentParser(add_help=False)
    global_options(common, suppress=True)
    _add_ensure(commands, common)
    _add_cache_commands(commands, common)
    _add_model_commands(commands, common)
    _add_engine_commands(commands, common)
    p = commands.add_parser("completion", parents=[common], help="a bash, zsh or fish completion script")
    p.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell the script is for")
    p.set_defaults(func=lazy("completion", "cmd_completion"))
    parser.description = "Provision models: this exact model, verified, on this machine, now.\n\n" + commands.grouped()
    return parser, commands.summaries


def _add_ensure(sub: Any, common: argparse.ArgumentParser) -> None:
    """``ensure`` (alias ``pull``): the main job."""
    for name in ("ensure", "pull"):
        summary = "make a model present and verified; print its path" if name == "ensure" else "the same as ensure"
        p = sub.add_parser(name, parents=[common], help=summary)
        p.add_argument(
            "ref",
            help="model reference: ./m.gguf, ./model_repository/, file:/abs, hf:org/repo[/f.gguf], https://…, "
            "s3://bucket/key or s3://bucket/prefix/, oci://registry/repo:tag",
        )
        p.add_argument("--digest", help="expected digest, sha256:<64 hex>; strict unless --no-strict")
        strictness = p.add_mutually_exclusive_group()
        strictness.add_argument(
            "--no-strict",
            dest="strict",
            action="store_false",
            default=None,
            help="a digest mismatch warns instead of failing",
        )
        strictness.add_argument(
            "--strict",
            dest="strict",
            action="store_true",
            default=None,
            help="fail on a digest mismatch (the default when --digest is given)",
        )
        p.add_argument(
            "--require-signature",
            action="store_true",
            default=None,
            help="Active only with a model-signing signature (model.sig / FILE.sig) verified by --signature-key",
        )
        p.add_argument("--signature-key", metavar="PEM", help="public key for --require-signature")
        p.add_argument(
            "--engine",
            choices=list(ENGINES),
            help="write the handoff for this engine (default from the model format)",
        )
        p.add_argument(
            "--handoff-dir",
            metavar="DIR",
            help="write DIR/.runtime/engines/<engine>.json and a provenance line",
        )
        p.add_argument(
            "--refresh",
            action="store_true",
            help="re-check the source even when a verified copy is cached (conditional request)",
        )
        p.add_argument(
            "--include",
            action="append",
            default=[],
            metavar="GLOB",
            help="Hub repo files to fetch (repeatable; replaces the default minimal set)",
        )
        p.add_argument(
            "--exclude", action="append", default=[], metavar="GLOB", help="Hub repo files to leave out (repeatable)"
        )
        p.add_argument(
            "--token",
            help="the Hub token for this run, as `hf download --token` (HF_TOKEN keeps it out of the process list)",
        )
        p.add_argument(
            "--local-dir",
            metavar="DIR",
            help="also lay the verified files out in DIR (hard links on the cache's filesystem, else checked "
            "copies), as `hf download --local-dir`",
        )
        p.add_argument(
            "--max-workers",
            type=int,
            metavar="N",
            help="the most connections for one file (transfer.connections), as `hf download --max-workers`",
        )
        p.set_defaults(func=lazy("model_commands", "cmd_ensure"))


def _add_cache_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Commands over the whole cache: ls, gc, pins, leases, push, import."""
    p = sub.add_parser("ls", parents=[common], help="list the catalog, with the cache's real disk use")
    p.add_argument(
        "--sort",
        choices=["name", "size", "used"],
        default="name",
        help="name (default), size (largest first), used (least recently used first)",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="EXPR",
        help="size>1GB, size<500MB, unused>7d, used<1h, lifecycle=Failed, format=gguf (repeatable)",
    )
    p.set_defaults(func=lazy("cache_commands", "cmd_ls"))

    p = sub.add_parser("gc", parents=[common], help="remove unreferenced blobs, stale views and partials")
    p.add_argument("--max-size", metavar="SIZE", help="also evict least recently used entries down to SIZE")
    p.add_argument("--dry-run", action="store_true", help="print the plan, remove nothing")
    p.add_argument("--grace", default="1h", metavar="DURATION", help="keep partial downloads younger than this")
    p.add_argument("--failed-retention", default="7d", metavar="DURATION", help="keep Failed entries this long")
    p.set_defaults(func=lazy("cache_commands", "cmd_gc"))

    for name, helptext in (("pin", "protect a model from eviction and gc"), ("unpin", "remove the protection")):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("ref", metavar="ID", help="the model's id (or its ref)")
        p.set_defaults(func=lazy("cache_commands", "cmd_pin"), pinned=name == "pin")

    p = sub.add_parser("lease", parents=[common], help="mark a model in use by a process; prints the lease id")
    p.add_argument("ref", metavar="ID", help="the model's id (or its ref)")
    p.add_argument("--holder", help="who holds it (shown by rm)")
    p.add_argument("--pid", type=int, help="the process using it (default: the caller of this command)")
    p.add_argument("--ttl", metavar="DURATION", help="a lease that expires instead of following a process")
    p.set_defaults(func=lazy("cache_commands", "cmd_lease"))

    p = sub.add_parser("release", parents=[common], help="end a lease")
    p.add_argument("lease_id", metavar="LEASE_ID", help="the id `lease` printed (see `leases`)")
    p.set_defaults(func=lazy("cache_commands", "cmd_release"))

    p = sub.add_parser("leases", parents=[common], help="list the live leases (expired and dead ones are dropped)")
    p.set_defaults(func=lazy("cache_commands", "cmd_leases"))
    add_share_commands(sub, common)


def _add_model_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Commands about one model or the service: inspect, locate, verify, rm, serve, provision."""
    p = sub.add_parser("inspect", parents=[common], help="show a model's catalog entry and metadata")
    p.add_argument("ref", help="model id or reference (a local file is read without registering it)")
    p.add_argument(
        "--bom", metavar="FILE", help="also write a CycloneDX ML-BOM of the provisioned model to FILE ('-': stdout)"
    )
    p.set_defaults(func=lazy("model_commands", "cmd_inspect"))

    p = sub.add_parser("locate", parents=[common], help="print where a provisioned model is (no hashing)")
    p.add_argument("ref", help="the model's id or ref")
    p.set_defaults(func=lazy("model_commands", "cmd_locate"))

    p = sub.add_parser("verify", parents=[common], help="re-hash provisioned models")
    p.add_argument("ids", nargs="*", metavar="ID", help="the models to re-hash (or --all)")
    p.add_argument("--all", action="store_true", help="verify every catalog entry")
    p.add_argument("--repair", action="store_true", help="re-fetch models that fail from their source")
    p.add_argument("--jobs", type=int, help="parallel hashing threads (default: number of cores)")
    p.set_defaults(func=lazy("model_commands", "cmd_verify"))

    p = sub.add_parser("rm", parents=[common], help="remove catalog entries (and store files only they use)")
    p.add_argument("pattern", metavar="ID|GLOB", help="a model id, or a glob over ids (hf:org/*)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed")
    p.add_argument("--force", action="store_true", help="remove even if pinned or leased")
    p.set_defaults(func=lazy("model_commands", "cmd_rm"))

    p = sub.add_parser(
        "serve", parents=[common], help="the HTTP API and the OpenAI-compatible endpoint for every model"
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs a token)")
    p.add_argument("--port", type=int, default=8077, help="port (default 8077)")
    p.add_argument("--openapi", action="store_true", help="print the OpenAPI document and exit")
    p.set_defaults(func=lazy("share_commands", "cmd_serve"))

    p = sub.add_parser("provision", parents=[common], help="provision from a config file and write the handoff")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML or JSON model config")
    p.add_argument("--out", default=".", metavar="DIR", help="where .runtime/ is written (default .)")
    p.add_argument("--bom", action="store_true", help="also write each model's AI-BOM to DIR/.runtime/bom/")
    p.set_defaults(func=lazy("model_commands", "cmd_provision"))


def _add_engine_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Engines on verified models: up, engines, down (docs/engines.md)."""
    p = sub.add_parser("up", parents=[common], help="ensure a model, start its engine, wait until it is ready")
    p.add_argument("ref", help="the model (every ensure rule applies: nothing unverified reaches an engine)")
    p.add_argument(
        "--engine", choices=list(ENGINE_KINDS), default="llamacpp", help="the engine to run (default llamacpp)"
    )
    p.add_argument("--pool", default="default", help="pool id (default: default)")
    p.add_argument("--replica", default="0", help="replica id recorded in the handoff")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (0 or a taken port: a free one, said so)")
    p.add_argument("--binary", metavar="PATH", help="the engine binary (default: settings, then PATH)")
    p.add_argument("--digest", help="expected digest, sha256:<64 hex>")
    p.add_argument(
        "--no-strict",
        dest="strict",
        action="store_false",
        default=None,
        help="a digest mismatch warns instead of failing (the engine then runs on what was found)",
    )
    p.add_argument("--handoff-dir", metavar="DIR", help="write DIR/.runtime/engines/<engine>.json")
    p.add_argument("--bom", action="store_true", help="also write the model's AI-BOM to DIR/.runtime/bom/")
    p.add_argument(
        "--flag",
        action="append",
        default=[],
        metavar="ARG",
        help="an engine flag or value, repeatable: --flag=--threads --flag=2",
    )
    p.set_defaults(func=lazy("engine_commands", "cmd_up"))

    p = sub.add_parser("engines", parents=[common], help="list engine pools; install, list, remove, push engines")
    p.set_defaults(func=lazy("engine_commands", "cmd_engines"))
    _add_engine_install_commands(p.add_subparsers(dest="engines_command", metavar="SUBCOMMAND"), common)
    _add_run(sub, common)

    p = sub.add_parser("down", parents=[common], help="stop an engine pool (SIGTERM, 5 s, SIGKILL)")
    p.add_argument("--pool", default="default", help="the pool to stop (default: the pool up starts by default)")
    p.add_argument("--all", action="store_true", help="stop every pool")
    p.set_defaults(func=lazy("engine_commands", "cmd_down"))

    p = sub.add_parser(
        "storage-initializer",
        parents=[common],
        help="KServe's storage initializer: SRC DEST pairs (hf://, s3://, https://, oci://)",
    )
    p.add_argument("pairs", nargs="+", metavar="SRC DEST", help="a storage URI and the directory it goes to")
    p.set_defaults(func=lazy("kserve", "cmd_storage_initializer"))

    p = sub.add_parser("engine-supervise", parents=[common])  # internal: started by `up`, never listed
    p.add_argument("--api", action="store_true", help="the pool was started through the HTTP API")
    p.add_argument("pool", help="the pool to supervise")
    p.set_defaults(func=lazy("engine_commands", "cmd_engine_supervise"))


def _add_engine_install_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """``engines install | installed | uninstall | push`` (docs/engines.md, "Installing an engine")."""
    p = sub.add_parser(
        "install",
        parents=[common],
        help="build llama-server from its pinned, verified sources (or install a pushed one with --from)",
    )
    p.add_argument("kind", choices=["llamacpp"], help="the engine (llamacpp: llama-server)")
    p.add_argument("--from", dest="from_ref", metavar="OCI_REF", help="install an engine pushed by `engines push`")
    p.add_argument("--source", metavar="REF", help="another source archive to build from (needs --digest)")
    p.add_argument("--digest", help="sha256:<64 hex> of --source (or, with --from, of the pushed engine's files)")
    p.add_argument("--subdir", help="the llama.cpp tree inside --source (vendor/llama.cpp in a llama-cpp-python sdist)")
    p.add_argument("--jobs", type=int, help="parallel compile jobs (default engines.llamacpp.build_jobs: 2)")
    p.add_argument("--flag", action="append", default=[], metavar="ARG", help="an extra cmake flag, repeatable")
    p.set_defaults(func=lazy("install_commands", "cmd_install"))

    p = sub.add_parser("installed", parents=[common], help="list the installed engines")
    p.set_defaults(func=lazy("install_commands", "cmd_installed"))

    p = sub.add_parser("uninstall", parents=[common], help="remove an installed engine (not one a pool runs)")
    p.add_argument("kind", choices=["llamacpp"], help="the engine (llamacpp: llama-server)")
    p.add_argument("id", nargs="?", help="its id from `engines installed` (default: every installed one)")
    p.set_defaults(func=lazy("install_commands", "cmd_uninstall"))

    p = sub.add_parser("push", parents=[common], help="publish the installed engine to an OCI registry")
    p.add_argument("kind", choices=["llamacpp"], help="the engine (llamacpp: llama-server)")
    p.add_argument("destination", help="oci://registry/team/llama-server:TAG")
    p.add_argument("--id", help="which installed engine (default: the newest)")
    p.set_defaults(func=lazy("install_commands", "cmd_push"))


def _add_run(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="chat with a verified model (starts its engine, stops it after)")
    p.add_argument("ref", help="the model (every ensure rule applies)")
    p.add_argument("prompt", nargs="?", help="answer this and exit (the answer on stdout); else an interactive chat")
    p.add_argument("--digest", help="expected digest, sha256:<64 hex>")
    p.add_argument("--system", metavar="TEXT", help="the system message")
    p.add_argument("--max-tokens", type=int, metavar="N", help="the most tokens one answer may have")
    p.add_argument("--keep", action="store_true", help="leave the engine running on exit (stop it with down)")
    p.add_argument("--binary", metavar="PATH", help="the llama-server binary (default: settings, PATH, installed)")
    p.add_argument("--flag", action="append", default=[], metavar="ARG", help="an engine flag or value, repeatable")
    p.set_defaults(func=lazy("run_command", "cmd_run"))


def build_engine_parser() -> argparse.ArgumentParser:
    """``engine-provisioner --config FILE [--pool ID]``: a model config with an ``engine:`` section."""
    parser = argparse.ArgumentParser(
        prog="engine-provisioner",
        description="Provision a model and run its engine, from one config file.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    global_options(parser, suppress=False)
    parser.add_argument("--config", required=True, metavar="FILE", help="model config + engine: section (YAML/JSON)")
    parser.add_argument("--pool", help="pool id (overrides engine.pool)")
    parser.add_argument("--handoff-dir", metavar="DIR", help="write DIR/.runtime/engines/<engine>.json")
    parser.set_defaults(func=lazy("engine_commands", "cmd_engine_config"))
    return parser
