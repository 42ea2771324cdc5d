"""Commands about one model: ensure, inspect, locate, verify, rm, provision."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from model_provisioner.api.handoff import provision_and_handoff, provision_config
from model_provisioner.api.shapes import entry_json
from model_provisioner.cli.context import provisioner
from model_provisioner.cli.output import PROG, ago, emit, progress_bar
from model_provisioner.core.errors import ExitCode, InvalidInput, NotFound
from model_provisioner.core.refs import FileRef, hub_hint, parse
from model_provisioner.core.units import human_size
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.formats import inspect_file
from model_provisioner.formats.memory import MemoryEstimate
from model_provisioner.ops.export import export
from model_provisioner.storage.catalog import CatalogEntry, EntryFile


def cmd_ensure(args: argparse.Namespace) -> int:
    with provisioner(args) as prov, progress_bar(args, prov.settings.progress_interval_s) as progress:
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
            resolved = prov.ensure_present(args.ref, args.digest, strict=args.strict, **options)
        took = int((time.monotonic() - start) * 1000)
        laid_out = export(prov, resolved, Path(args.local_dir).absolute()) if args.local_dir else None
    if laid_out is not None and not args.quiet and not args.json:
        how = f"{laid_out.linked} linked" + (
            f", {human_size(laid_out.copied_bytes)} copied" if laid_out.copied_bytes else ""
        )
        sys.stderr.write(f"{PROG}: {laid_out.files} file(s) in {args.local_dir} ({how})\n")
    if not args.quiet and not args.json:
        how = "cached" if resolved.from_cache else OUTCOME_WORDS.get(str(resolved.verification), "provisioned")
        fetched = f", {human_size(resolved.bytes_fetched)} fetched" if resolved.bytes_fetched else ""
        fetched += f", {resolved.origin}" if resolved.origin else ""
        sys.stderr.write(
            f"{PROG}: {resolved.id}: {how}, {resolved.digest}, {human_size(resolved.size_bytes)}{fetched}, {took} ms\n"
        )
    emit(args, resolved.as_json(engine), str(resolved.local_path))
    return 0


#: what ``ensure`` says it checked (docs/verification.md): only "verified" means an expected digest matched
OUTCOME_WORDS = {
    "verified": "verified against the expected digest",
    "recorded": "recorded, no expected digest given",
    "source_verified": "matched the source's own digest (no expected digest given)",
    "mismatch_advisory": "kept although not the expected digest (--no-strict)",
}


def cmd_inspect(args: argparse.Namespace) -> int:
    ref = parse(args.ref)
    with provisioner(args) as prov:
        entry = prov.entry(ref)
        history = prov.catalog.verifications(ref.id) if entry is not None else []
        provisioning_now = entry is not None and prov.provisioning_now(entry)
        files = prov.catalog.files(entry.id) if entry is not None else []
    if args.bom and entry is None:
        raise NotFound(
            f"{ref.id} is not in the catalog: a BOM records a provisioned model; run `{PROG} ensure {ref.id}`"
        )
    if entry is not None:
        payload = entry_json(entry, history, provisioning_now=provisioning_now)
    elif isinstance(ref, FileRef):
        if not os.path.isfile(ref.path):
            raise NotFound(f"model file not found: {ref.path}; check the path{hub_hint(ref.path)}")
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
    from model_provisioner.api.engine_view import with_memory  # noqa: PLC0415  # the engines layer: only inspect needs it (ensure never loads it)

    memory = with_memory(payload, prov.settings.engines.llamacpp)
    if args.bom and entry is not None:
        _write_bom(args.bom, entry, files, payload.get("lint"))
        if args.bom == "-":
            return 0  # stdout holds the BOM alone
    if args.json:
        emit(args, payload)
    else:
        _write_inspection(payload, memory)
    return 0


def _write_bom(where: str, entry: CatalogEntry, files: list[EntryFile], lint: Any) -> None:
    from model_provisioner.api.bom import model_bom  # noqa: PLC0415  # heavy: cyclonedx, only for --bom

    if not files and entry.digest and entry.local_path:  # a one-file model
        files = [EntryFile(os.path.basename(entry.local_path), entry.digest.split(":", 1)[-1], entry.size_bytes)]
    text = model_bom(entry, files, lint)
    if where == "-":
        sys.stdout.write(text + "\n")
        return
    Path(where).write_text(text + "\n", encoding="utf-8")
    sys.stderr.write(f"{PROG}: AI-BOM (CycloneDX 1.6, validated) written to {where}\n")


def _write_inspection(payload: dict[str, Any], memory: MemoryEstimate | None) -> None:
    for key, value in payload.items():
        if value is None:
            continue  # nothing to say (never a Python None on the screen)
        if key == "metadata":
            for mkey, mvalue in value.items():
                sys.stdout.write(f"  {mkey}: {json.dumps(mvalue) if not isinstance(mvalue, str) else mvalue}\n")
        elif key.endswith("_ms") and isinstance(value, int):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value / 1000))
            sys.stdout.write(f"{key[:-3]}: {stamp} ({ago(time.time() * 1000 - value)})\n")
        elif key == "memory" and memory is not None:
            sys.stdout.write(f"memory: {memory.describe()} with llama-server's defaults\n")
        elif key == "lint":
            problems = value["problems"]
            checked = f"{value['tensors']} tensors" + (", the chat template" if value["templates"] else "")
            sys.stdout.write(
                f"safety lint: {'ok' if not problems else 'REFUSED: ' + '; '.join(problems)} ({checked})\n"
            )
        elif key != "verifications":
            sys.stdout.write(f"{key}: {value}\n")


def cmd_locate(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        resolved = prov.locate(args.ref)
    if resolved is None:
        raise NotFound(
            f"{args.ref} is not provisioned here (or changed since it was verified); run `{PROG} ensure {args.ref}`"
        )
    emit(args, resolved.as_json(), str(resolved.local_path))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise InvalidInput("verify needs model ids or --all")
    with provisioner(args) as prov:
        # --all judges the models that have bytes here: Active ones, and files registered in place
        ids = [e.id for e in prov.list_models() if has_bytes(e)] if args.all else args.ids
        reports = prov.verify_many(ids, jobs=args.jobs, repair=args.repair)
    failed = [r for r in reports if not r.ok]
    if args.json:
        emit(args, {"results": [r.__dict__ for r in reports], "failed": len(failed)})
    else:
        for r in reports:
            sys.stdout.write(("ok    " if r.ok else "FAILED ") + r.message + "\n")
    if failed:
        if not args.json:
            sys.stderr.write(f"{PROG}: error: {len(failed)} of {len(reports)} models failed verification\n")
        return int(ExitCode.VERIFICATION_FAILED)
    return 0


def has_bytes(entry: CatalogEntry) -> bool:
    if entry.lifecycle is Lifecycle.ACTIVE:
        return True
    return entry.scheme == "file" and bool(entry.local_path) and os.path.exists(entry.local_path)


def cmd_rm(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        in_place = {e.id for e in prov.list_models() if e.blob is None and e.scheme == "file"}
        removed = prov.evict(args.pattern, dry_run=args.dry_run, force=args.force)
    if not removed:
        raise NotFound(f"nothing in the catalog matches {args.pattern!r}; see `{PROG} ls`")

    def line(model_id: str) -> str:
        if model_id in in_place:  # registered in place: only the catalog entry goes, never the user's file
            verb = "would forget" if args.dry_run else "forgot"
            return f"{verb} {model_id} (its file is yours and stays where it is)"
        return ("would remove " if args.dry_run else "removed ") + model_id

    emit(
        args,
        {"removed": removed, "forgotten_only": [r for r in removed if r in in_place], "dry_run": args.dry_run},
        "\n".join(line(r) for r in removed),
    )
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    with provisioner(args) as prov:
        results = provision_config(args.config, args.out, prov)
        if args.bom:
            from model_provisioner.api.bom import write_beside  # noqa: PLC0415  # heavy: cyclonedx, only for --bom

            for resolved, handoff in results:
                written = write_beside(prov, resolved.id, handoff)
                if not args.quiet and not args.json:
                    sys.stderr.write(f"{PROG}: {resolved.id}: AI-BOM written to {written}\n")
    models = [{**resolved.as_json(handoff.stem), "handoff": str(handoff)} for resolved, handoff in results]
    if not args.quiet and not args.json:
        for resolved, handoff in results:
            sys.stderr.write(f"{PROG}: {resolved.id}: {resolved.verification}; handoff written to {handoff}\n")
    emit(args, {"models": models}, "\n".join(str(resolved.local_path) for resolved, _ in results))
    return 0
