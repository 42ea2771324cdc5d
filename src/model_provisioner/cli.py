"""Command line: ``model-provisioner`` (alias ``mprov``). Contracts in DESIGN §3.

Results go to stdout (one JSON object with ``--json``); human messages, warnings and errors go to
stderr, one line each, never a traceback for a user error. Exit codes are ``errors.ExitCode``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import ExitCode, InvalidInput, NotFound, ProvisionerError

PROG = "model-provisioner"
log = logging.getLogger("model_provisioner")


def _setup_logging(quiet: bool, verbose: bool, log_format: str = "text") -> None:
    from .observability import configure_logging

    configure_logging(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING, log_format, PROG)


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--cache-dir",
        default=default,
        metavar="DIR",
        help="cache directory (env MODEL_PROVISIONER_CACHE, default ~/.cache/models)",
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("model-provisioner")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Provision models: this exact model, verified, on this machine, now.",
        epilog="exit codes: 0 ok, 1 unexpected, 2 invalid input, 3 not found, 4 verification failed, "
        "5 denied by policy or offline, 6 transfer failed, 7 out of disk space, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)

    for name in ("ensure", "pull"):
        p = sub.add_parser(name, parents=[common], help="make a model present and verified; print its path")
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
            choices=["llamacpp", "vllm", "tgi", "triton"],
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
        p.set_defaults(func=cmd_ensure)

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
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("gc", parents=[common], help="remove unreferenced blobs, stale views and partials")
    p.add_argument("--max-size", metavar="SIZE", help="also evict least recently used entries down to SIZE")
    p.add_argument("--dry-run", action="store_true", help="print the plan, remove nothing")
    p.add_argument("--grace", default="1h", metavar="DURATION", help="keep partial downloads younger than this")
    p.add_argument("--failed-retention", default="7d", metavar="DURATION", help="keep Failed entries this long")
    p.set_defaults(func=cmd_gc)

    for name, helptext in (("pin", "protect a model from eviction and gc"), ("unpin", "remove the protection")):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("ref", metavar="ID")
        p.set_defaults(func=cmd_pin, pinned=name == "pin")

    p = sub.add_parser("lease", parents=[common], help="mark a model in use by a process; prints the lease id")
    p.add_argument("ref", metavar="ID")
    p.add_argument("--holder", help="who holds it (shown by rm)")
    p.add_argument("--pid", type=int, help="the process using it (default: the caller of this command)")
    p.add_argument("--ttl", metavar="DURATION", help="a lease that expires instead of following a process")
    p.set_defaults(func=cmd_lease)

    p = sub.add_parser(
        "push",
        parents=[common],
        help="publish a provisioned model to a team mirror (OCI registry as ModelPack, or an S3 prefix)",
    )
    p.add_argument("ref", metavar="ID")
    p.add_argument(
        "destination",
        metavar="DEST",
        help="oci://registry/repo[:tag] or s3://bucket/prefix/; a trailing '/' on an oci:// or s3:// root "
        "places it where mirrors.models finds it",
    )
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("release", parents=[common], help="end a lease")
    p.add_argument("lease_id", metavar="LEASE_ID")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("leases", parents=[common], help="list the live leases (expired and dead ones are dropped)")
    p.set_defaults(func=cmd_leases)

    p = sub.add_parser(
        "import",
        parents=[common],
        help="adopt verified blobs from huggingface_hub and Ollama caches (nothing downloaded twice)",
    )
    p.add_argument("--hf-cache", metavar="DIR", help="huggingface_hub cache (default HF_HUB_CACHE or ~/.cache/...)")
    p.add_argument("--ollama", metavar="DIR", help="Ollama models dir (default OLLAMA_MODELS or ~/.ollama/models)")
    p.add_argument("--only", choices=["hf", "ollama"], help="import from one kind of cache only")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("inspect", parents=[common], help="show a model's catalog entry and metadata")
    p.add_argument("ref", help="model id or reference (a local file is read without registering it)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("locate", parents=[common], help="print where a provisioned model is (no hashing)")
    p.add_argument("ref")
    p.set_defaults(func=cmd_locate)

    p = sub.add_parser("verify", parents=[common], help="re-hash provisioned models")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="verify every catalog entry")
    p.add_argument("--repair", action="store_true", help="re-fetch models that fail from their source")
    p.add_argument("--jobs", type=int, help="parallel hashing threads (default: number of cores)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("rm", parents=[common], help="remove catalog entries (and store files only they use)")
    p.add_argument("pattern", metavar="ID|GLOB")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed")
    p.add_argument("--force", action="store_true", help="remove even if pinned or leased")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("serve", parents=[common], help="run the HTTP control plane (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs a token)")
    p.add_argument("--port", type=int, default=8077)
    p.add_argument("--openapi", action="store_true", help="print the OpenAPI document and exit")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("provision", parents=[common], help="provision from a config file and write the handoff")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML or JSON model config")
    p.add_argument("--out", default=".", metavar="DIR", help="where .runtime/ is written (default .)")
    p.set_defaults(func=cmd_provision)
    return parser


def _provisioner(args: argparse.Namespace) -> Any:
    from .config import Settings
    from .provisioner import ModelProvisioner

    settings = Settings.from_env(
        cache_dir=args.cache_dir,
        offline=args.offline or None,
        require_signature=getattr(args, "require_signature", None),
        signature_public_key=getattr(args, "signature_key", None),
    )
    return ModelProvisioner(settings)


def _emit(args: argparse.Namespace, payload: Any, human: str | None = None) -> None:
    if args.json:
        sys.stdout.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    elif human is not None:
        sys.stdout.write(human + "\n")


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# ===================================================================================== commands
def cmd_ensure(args: argparse.Namespace) -> int:
    from .handoff import provision_and_handoff

    with _provisioner(args) as prov, _progress_bar(args) as progress:
        start = time.monotonic()
        engine = args.engine
        options: dict[str, Any] = {
            "refresh": args.refresh,
            "include": args.include,
            "exclude": args.exclude,
            "progress": progress,
        }
        if args.handoff_dir:
            resolved, handoff = provision_and_handoff(
                prov,
                args.ref,
                args.handoff_dir,
                expected_digest=args.digest,
                strict=args.strict,
                engine=engine,
                **options,
            )
            engine = handoff.stem
        else:
            resolved = prov.ensure_present(args.ref, args.digest, args.strict, **options)
        took = int((time.monotonic() - start) * 1000)
    if not args.quiet and not args.json:
        how = "cached" if resolved.from_cache else f"verified ({resolved.verification})"
        fetched = f", {_human_size(resolved.bytes_fetched)} fetched" if resolved.bytes_fetched else ""
        fetched += f", {resolved.origin}" if resolved.origin else ""
        sys.stderr.write(
            f"{PROG}: {resolved.id}: {how}, {resolved.digest}, {_human_size(resolved.size_bytes)}{fetched}, {took} ms\n"
        )
    _emit(args, resolved.as_json(engine), str(resolved.local_path))
    return 0


@contextlib.contextmanager
def _progress_bar(args: argparse.Namespace) -> Iterator[Callable[[int, int | None], None] | None]:
    """A rich progress bar on stderr, only for an interactive terminal and never with --json/-q."""
    if args.json or args.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=_stderr_console(),
    ) as bar:
        task = bar.add_task(args.ref if len(args.ref) < 48 else "…" + args.ref[-47:], total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def cmd_ls(args: argparse.Namespace) -> int:
    from .lifecycle import usage

    filters = [_parse_filter(f) for f in args.filter]
    now = time.time() * 1000
    from .locks import model_lock_is_free

    with _provisioner(args) as prov:
        rows = prov.catalog.rows_for_listing()
        use = usage(prov, rows)
        # a Pending entry nobody is provisioning was interrupted (a SIGKILL); Ctrl-C/SIGTERM mark it themselves
        stale = {r[0] for r in rows if r[1] == "Pending" and model_lock_is_free(prov.store.locks_dir, r[0])}
    models = []
    for r in rows:
        interrupted = r[0] in stale or (r[1] == "Failed" and r[4] == "interrupted")
        item = {
            "id": r[0],
            "lifecycle": "Interrupted" if interrupted else r[1],
            "size_bytes": r[2],
            "format": r[3],
            "verification": r[4],
            "local_path": r[5],
            "last_used_ms": r[6],
            "pinned": bool(r[7]),
            "digest": r[10],
            "scheme": r[12],
        }
        if all(check(item, now) for check in filters):
            models.append(item)
    if args.sort == "size":
        models.sort(key=lambda m: -m["size_bytes"])
    elif args.sort == "used":
        models.sort(key=lambda m: m["last_used_ms"])
    if args.json:
        _emit(
            args,
            {
                "models": models,
                "entries": use.entries,
                "logical_bytes": use.logical_bytes,
                "disk_bytes": use.disk_bytes,
            },
        )
        return 0
    if models:
        table = [("ID", "LIFECYCLE", "SIZE", "FORMAT", "LAST USED", "PATH")]
        for m in models:
            pin = " (pinned)" if m["pinned"] else ""
            table.append(
                (
                    m["id"] + pin,
                    m["lifecycle"],
                    _human_size(m["size_bytes"]),
                    m["format"],
                    _ago(now - m["last_used_ms"]),
                    m["local_path"] or "-",
                )
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
        out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in table]
        sys.stdout.write("\n".join(out) + "\n")
    sys.stderr.write(
        f"{PROG}: {len(models)} of {use.entries} entries; {_human_size(use.logical_bytes)} listed, "
        f"{_human_size(use.disk_bytes)} on disk (shared blobs counted once)\n"
    )
    return 0


def _ago(ms: float) -> str:
    seconds = max(0.0, ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _parse_filter(expr: str) -> Callable[[dict[str, Any], float], bool]:
    """``size>1GB``, ``unused>7d``, ``used<1h``, ``lifecycle=Failed``, ``format=gguf``."""
    import re

    from .lifecycle import parse_duration, parse_size

    m = re.fullmatch(r"\s*(size|unused|used|lifecycle|format|scheme)\s*(>=|<=|>|<|=)\s*(\S+)\s*", expr)
    if m is None:
        raise InvalidInput(f"invalid filter {expr!r}; use e.g. 'size>1GB', 'unused>7d', 'lifecycle=Failed'")
    key, op, raw = m.groups()
    if key in ("lifecycle", "format", "scheme"):
        if op != "=":
            raise InvalidInput(f"filter {expr!r}: {key} takes '=' only")
        return lambda item, now: str(item[key]).lower() == raw.lower()
    value = parse_size(raw) if key == "size" else parse_duration(raw) * 1000
    compare = {">": float.__gt__, "<": float.__lt__, ">=": float.__ge__, "<=": float.__le__, "=": float.__eq__}[op]
    if key == "size":
        return lambda item, now: compare(float(item["size_bytes"]), float(value))
    # unused = time since last use; used<1h means the same quantity, read the other way
    return lambda item, now: compare(float(now - item["last_used_ms"]), float(value))


def cmd_gc(args: argparse.Namespace) -> int:
    from .lifecycle import parse_duration, parse_size

    max_bytes = parse_size(args.max_size) if args.max_size else None
    with _provisioner(args) as prov:
        report = prov.gc(
            max_bytes=max_bytes,
            dry_run=args.dry_run,
            grace_s=parse_duration(args.grace),
            failed_retention_s=parse_duration(args.failed_retention),
        )
    if args.json:
        _emit(args, {"dry_run": report.dry_run, "removed": report.removed, "bytes_freed": report.bytes_freed})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for item in report.removed:
        size = f" ({_human_size(item['bytes'])})" if item["bytes"] else ""
        sys.stdout.write(f"{verb} {item['kind']}: {item['what']}{size}\n")
    sys.stderr.write(
        f"{PROG}: gc {verb} {len(report.removed)} items, "
        f"{_human_size(report.bytes_freed)} {'to free' if args.dry_run else 'freed'}\n"
    )
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from .refs import parse

    with _provisioner(args) as prov:
        if not prov.pin(args.ref, args.pinned):
            raise NotFound(f"{parse(args.ref).id} is not in the catalog; see `{PROG} ls`")
    _emit(
        args,
        {"id": parse(args.ref).id, "pinned": args.pinned},
        ("pinned " if args.pinned else "unpinned ") + parse(args.ref).id,
    )
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .mirror import push

    with _provisioner(args) as prov:
        result = push(prov, args.ref, args.destination)
    human = (
        f"pushed {result.files} file(s) to {result.destination} "
        f"({result.bytes_uploaded} bytes uploaded, {result.bytes_skipped} already there); digest {result.digest}"
    )
    _emit(args, result.as_dict(), human)
    return 0


def cmd_lease(args: argparse.Namespace) -> int:
    from .lifecycle import acquire_lease, parse_duration

    ttl = parse_duration(args.ttl) if args.ttl else None
    pid = args.pid if args.pid is not None else (None if ttl else os.getppid())
    with _provisioner(args) as prov:
        lease = acquire_lease(prov, args.ref, holder=args.holder, pid=pid, ttl_s=ttl)
    from .lifecycle import lease_json

    _emit(args, lease_json(lease), lease.lease_id)
    return 0


def cmd_leases(args: argparse.Namespace) -> int:
    from .lifecycle import describe_lease, lease_json, live_leases

    with _provisioner(args) as prov:
        leases = live_leases(prov)
    text = "\n".join(
        f"{lease.lease_id}  {lease.holder}  {lease.model_id}  {describe_lease(lease)}" for lease in leases
    )
    _emit(args, {"leases": [lease_json(lease) for lease in leases]}, text or None)
    if not leases and not args.json:
        sys.stderr.write(f"{PROG}: no live leases\n")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    with _provisioner(args) as prov:
        if not prov.catalog.remove_lease(args.lease_id):
            raise NotFound(f"no lease {args.lease_id!r}; it was released or expired")
    _emit(args, {"released": args.lease_id}, f"released {args.lease_id}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import Settings

    settings = Settings.from_env(cache_dir=args.cache_dir, offline=args.offline or None)
    if args.openapi:
        from .extras import require_extra

        require_extra("server", "the HTTP API (serve)")
        from .server import create_app

        sys.stdout.write(json.dumps(create_app(settings).openapi(), indent=2, sort_keys=True) + "\n")
        return 0
    from .extras import require_extra

    require_extra("server", "the HTTP API (serve)")
    from .server import serve

    serve(args.host, args.port, settings)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .lifecycle import ImportReport, default_hf_cache, default_ollama_models, import_hf_cache, import_ollama

    report = ImportReport()
    with _provisioner(args) as prov:
        if args.only in (None, "hf"):
            hub = Path(args.hf_cache) if args.hf_cache else default_hf_cache()
            if hub.is_dir():
                import_hf_cache(prov, hub, report)
            elif args.hf_cache:
                raise NotFound(f"no huggingface_hub cache at {hub}")
        if args.only in (None, "ollama"):
            ollama = Path(args.ollama) if args.ollama else default_ollama_models()
            if ollama.is_dir():
                import_ollama(prov, ollama, report)
            elif args.ollama:
                raise NotFound(f"no Ollama models directory at {ollama}")
    if args.json:
        _emit(args, {"adopted": report.adopted, "skipped": report.skipped})
    else:
        for item in report.adopted:
            sys.stdout.write(f"adopted {item['ref']} ({_human_size(item['size_bytes'])}, {item['digest']})\n")
        sys.stderr.write(f"{PROG}: adopted {len(report.adopted)} files, skipped {len(report.skipped)}\n")
    return 0


def _entry_json(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "ref": e.ref,
        "scheme": e.scheme,
        "local_path": e.local_path,
        "lifecycle": str(e.lifecycle),
        "digest": e.digest,
        "size_bytes": e.size_bytes,
        "format": e.format,
        "verification": e.verification,
        "expected_digest": e.expected_digest,
        "strict": e.strict,
        "last_verified_ms": e.last_verified_ms,
        "created_ms": e.created_ms,
        "last_used_ms": e.last_used_ms,
        "metadata": e.metadata,
        "error": e.error,
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    from .refs import FileRef, parse

    ref = parse(args.ref)
    with _provisioner(args) as prov:
        entry = prov.entry(ref)
        history = prov.catalog.verifications(ref.id) if entry is not None else []
    if entry is not None:
        payload = _entry_json(entry)
        payload["verifications"] = [
            {
                "ts_ms": v.ts_ms,
                "result": v.result,
                "reason": v.reason,
                "digest": v.digest,
                "bytes_hashed": v.bytes_hashed,
            }
            for v in history
        ]
    elif isinstance(ref, FileRef):
        from .formats import inspect_file

        if not os.path.isfile(ref.path):
            raise NotFound(f"model file not found: {ref.path}; check the path")
        info = inspect_file(ref.path, ref.id)
        payload = {
            "id": ref.id,
            "local_path": ref.path,
            "lifecycle": None,
            "format": info.format,
            "size_bytes": os.path.getsize(ref.path),
            "metadata": info.metadata,
        }
    else:
        raise NotFound(f"{ref.id} is not in the catalog; run `{PROG} ensure {ref.id}` first")
    if args.json:
        _emit(args, payload)
    else:
        for key, value in payload.items():
            if value is None:
                continue  # nothing to say (never a Python None on the screen)
            if key == "metadata":
                for mkey, mvalue in value.items():
                    sys.stdout.write(f"  {mkey}: {json.dumps(mvalue) if not isinstance(mvalue, str) else mvalue}\n")
            elif key.endswith("_ms") and isinstance(value, int):
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value / 1000))
                sys.stdout.write(f"{key[:-3]}: {stamp} ({_ago(time.time() * 1000 - value)})\n")
            elif key != "verifications":
                sys.stdout.write(f"{key}: {value}\n")
    return 0


def cmd_locate(args: argparse.Namespace) -> int:
    with _provisioner(args) as prov:
        resolved = prov.locate(args.ref)
    if resolved is None:
        raise NotFound(
            f"{args.ref} is not provisioned here (or changed since it was verified); run `{PROG} ensure {args.ref}`"
        )
    _emit(args, resolved.as_json(), str(resolved.local_path))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise InvalidInput("verify needs model ids or --all")
    with _provisioner(args) as prov:
        ids = [e.id for e in prov.list_models()] if args.all else args.ids
        reports = prov.verify_many(ids, jobs=args.jobs, repair=args.repair)
    failed = [r for r in reports if not r.ok]
    if args.json:
        _emit(args, {"results": [r.__dict__ for r in reports], "failed": len(failed)})
    else:
        for r in reports:
            sys.stdout.write(("ok    " if r.ok else "FAILED ") + r.message + "\n")
    if failed:
        if not args.json:
            sys.stderr.write(f"{PROG}: error: {len(failed)} of {len(reports)} models failed verification\n")
        return int(ExitCode.VERIFICATION_FAILED)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _provisioner(args) as prov:
        in_place = {e.id for e in prov.list_models() if e.blob is None and e.scheme == "file"}
        removed = prov.evict(args.pattern, dry_run=args.dry_run, force=args.force)
    if not removed:
        raise NotFound(f"nothing in the catalog matches {args.pattern!r}; see `{PROG} ls`")

    def line(model_id: str) -> str:
        if model_id in in_place:  # registered in place: only the catalog entry goes, never the user's file
            verb = "would forget" if args.dry_run else "forgot"
            return f"{verb} {model_id} (its file is yours and stays where it is)"
        return ("would remove " if args.dry_run else "removed ") + model_id

    _emit(
        args,
        {"removed": removed, "forgotten_only": [r for r in removed if r in in_place], "dry_run": args.dry_run},
        "\n".join(line(r) for r in removed),
    )
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from .handoff import provision_config

    with _provisioner(args) as prov:
        results = provision_config(args.config, args.out, prov)
    models = [{**resolved.as_json(handoff.stem), "handoff": str(handoff)} for resolved, handoff in results]
    if not args.quiet and not args.json:
        for resolved, handoff in results:
            sys.stderr.write(f"{PROG}: {resolved.id}: {resolved.verification}; handoff written to {handoff}\n")
    _emit(args, {"models": models}, "\n".join(str(resolved.local_path) for resolved, _ in results))
    return 0


# ========================================================================================= main
def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a command like Ctrl-C: transfers stop, partials are kept


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    log_format = "text"
    metrics_file: str | None = None
    try:
        from .config import Settings

        settings = Settings.from_env()
        log_format, metrics_file = settings.log_format, settings.metrics_textfile
    except ProvisionerError:
        pass  # reported below, when the command builds its provisioner
    _setup_logging(args.quiet or args.json, args.verbose, log_format)
    try:
        if metrics_file:
            from .observability import METRICS

            METRICS.enable()
        return int(args.func(args))
    except ProvisionerError as exc:
        from .redact import redact_text

        message = redact_text(str(exc))
        sys.stderr.write(f"{PROG}: error: {message}\n")
        if getattr(args, "json", False):
            _emit(args, {"error": {"code": exc.code, "exit_code": int(exc.exit_code), "message": message}})
        return int(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if os.environ.get("MODEL_PROVISIONER_DEBUG"):
            raise
        from .redact import redact_text

        sys.stderr.write(
            f"{PROG}: internal error: {type(exc).__name__}: {redact_text(str(exc))} "
            "(set MODEL_PROVISIONER_DEBUG=1 for a traceback and report it)\n"
        )
        return int(ExitCode.UNEXPECTED)
    finally:
        if metrics_file:
            from .observability import METRICS

            if METRICS.enabled:  # not when the server extra is missing (that error was reported)
                _write_metrics_textfile(args, metrics_file)


def _write_metrics_textfile(args: argparse.Namespace, path: str) -> None:
    """node_exporter's textfile collector: written atomically after each command."""
    from prometheus_client import write_to_textfile

    from .observability import METRICS

    try:
        with _provisioner(args) as prov:
            METRICS.refresh_catalog(prov)
        write_to_textfile(path, METRICS.registry)
    except (OSError, ProvisionerError) as exc:
        log.warning("could not write the metrics textfile %s: %s", path, exc)


if __name__ == "__main__":
    raise SystemExit(main())
