"""Commands over the whole cache: ls, gc, pin/unpin, lease, leases, release, push, import, serve, and
KServe's storage-initializer (``kserve.py``)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_provisioner.api.shapes import entry_json, lease_json
from model_provisioner.cli.context import provisioner
from model_provisioner.cli.output import PROG, ago, emit, write_table
from model_provisioner.core.errors import InvalidInput, NotFound
from model_provisioner.core.refs import parse
from model_provisioner.core.units import human_size, parse_duration, parse_size
from model_provisioner.ops.adopt import ImportReport, import_hf_cache, import_ollama
from model_provisioner.ops.leases import acquire_lease, describe_lease, live_leases
from model_provisioner.ops.usage import usage
from model_provisioner.storage.othercaches import default_hf_cache, default_ollama_models


def cmd_ls(args: argparse.Namespace) -> int:
    filters = [_parse_filter(f) for f in args.filter]
    now = time.time() * 1000
    with provisioner(args) as prov:
        entries = prov.list_models()
        use = usage(prov, prov.catalog.rows_for_listing())
        # the shape of GET /v1/models' entries and inspect --json (api/shapes.py: one JSON shape per type)
        listed = [entry_json(e, provisioning_now=prov.provisioning_now(e)) for e in entries]
        store_root = prov.store.root
    models = [m for m in listed if all(check(m, now) for check in filters)]
    if args.sort == "size":
        models.sort(key=lambda m: -m["size_bytes"])
    elif args.sort == "used":
        models.sort(key=lambda m: m["last_used_ms"])
    listed_bytes = sum(m["size_bytes"] for m in models)
    in_place = sum(m["size_bytes"] for m in models if m["scheme"] == "file" and not _in_store(m, store_root))
    if args.json:
        emit(
            args,
            {
                "models": models,
                "entries": use.entries,
                "listed_bytes": listed_bytes,
                "logical_bytes": use.logical_bytes,
                "disk_bytes": use.disk_bytes,
            },
        )
        return 0
    if models:
        _write_listing(models, now)
    where = f" ({human_size(in_place)} of it in files registered where they are)" if in_place else ""
    sys.stderr.write(
        f"{PROG}: {len(models)} of {use.entries} entries; {human_size(listed_bytes)} listed{where}; "
        f"{human_size(use.disk_bytes)} on disk (shared blobs counted once)\n"
    )
    return 0


def _in_store(model: dict[str, Any], root: Path) -> bool:
    path = model.get("local_path") or ""
    return bool(path) and os.path.abspath(path).startswith(str(root) + os.sep)


def _write_listing(models: list[dict[str, Any]], now: float) -> None:
    """On a terminal a table cut to its width (full values: --json, inspect); else aligned columns, whole."""
    header = ("ID", "NAME", "LIFECYCLE", "SIZE", "FORMAT", "LAST USED", "PATH")
    rows = [
        (
            m["short_id"] or "-",
            m["id"] + (" (pinned)" if m["pinned"] else ""),
            m["lifecycle"],
            human_size(m["size_bytes"]),
            m["format"],
            ago(now - m["last_used_ms"]),
            m["local_path"] or "-",
        )
        for m in models
    ]
    if not sys.stdout.isatty():
        write_table([header, *rows])
        return
    from rich.console import Console  # noqa: PLC0415  # heavy: rich, only for an interactive terminal
    from rich.table import Table  # noqa: PLC0415  # heavy: rich, only for an interactive terminal

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in header:
        table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=4 if name == "PATH" else None)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _parse_filter(expr: str) -> Callable[[dict[str, Any], float], bool]:
    """``size>1GB``, ``unused>7d``, ``used<1h``, ``lifecycle=Failed``, ``format=gguf``."""
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
    max_bytes = parse_size(args.max_size) if args.max_size else None
    with provisioner(args) as prov:
        report = prov.gc(
            max_bytes=max_bytes,
            dry_run=args.dry_run,
            grace_s=parse_duration(args.grace),
            failed_retention_s=parse_duration(args.failed_retention),
        )
    if args.json:
        emit(args, {"dry_run": report.dry_run, "removed": report.removed, "bytes_freed": report.bytes_freed})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for item in report.removed:
        size = f" ({human_size(item['bytes'])})" if item["bytes"] else ""
        sys.stdout.write(f"{verb} {item['kind']}: {item['what']}{size}\n")
    sys.stderr.write(
        f"{PROG}: gc {verb} {len(report.removed)} items, "
        f"{human_size(report.bytes_freed)} {'to free' if args.dry_run else 'freed'}\n"
    )
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        if not prov.pin(args.ref, args.pinned):
            raise NotFound(f"{parse(args.ref).id} is not in the catalog; see `{PROG} ls`")
    emit(
        args,
        {"id": parse(args.ref).id, "pinned": args.pinned},
        ("pinned " if args.pinned else "unpinned ") + parse(args.ref).id,
    )
    return 0


def cmd_lease(args: argparse.Namespace) -> int:

    ttl = parse_duration(args.ttl) if args.ttl else None
    pid = args.pid if args.pid is not None else (None if ttl else os.getppid())
    with provisioner(args) as prov:
        lease = acquire_lease(prov, args.ref, holder=args.holder, pid=pid, ttl_s=ttl)
    emit(args, lease_json(lease), lease.lease_id)
    return 0


def cmd_leases(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        leases = live_leases(prov)
    text = "\n".join(f"{lease.lease_id}  {lease.holder}  {lease.model_id}  {describe_lease(lease)}" for lease in leases)
    emit(args, {"leases": [lease_json(lease) for lease in leases]}, text or None)
    if not leases and not args.json:
        sys.stderr.write(f"{PROG}: no live leases\n")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        if not prov.catalog.remove_lease(args.lease_id):
            raise NotFound(f"no lease {args.lease_id!r}; it was released or expired")
    emit(args, {"released": args.lease_id}, f"released {args.lease_id}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:

    report = ImportReport()
    with provisioner(args) as prov:
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
        emit(args, {"adopted": report.adopted, "skipped": report.skipped})
    else:
        for item in report.adopted:
            sys.stdout.write(f"adopted {item['ref']} ({human_size(item['size_bytes'])}, {item['digest']})\n")
        sys.stderr.write(f"{PROG}: adopted {len(report.adopted)} files, skipped {len(report.skipped)}\n")
    return 0


__all__ = [
    "cmd_gc",
    "cmd_import",
    "cmd_lease",
    "cmd_leases",
    "cmd_ls",
    "cmd_pin",
    "cmd_release",
]
