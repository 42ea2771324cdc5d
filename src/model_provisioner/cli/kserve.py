"""``model-provisioner storage-initializer SRC DEST [SRC DEST]...``: KServe's storage-initializer contract.

KServe runs a ``ClusterStorageContainer`` with the storage URI and ``/mnt/models`` as positional arguments
(several pairs with ``supportsMultiModelDownload``), credentials in the usual environment (``AWS_*``,
``S3_ENDPOINT`` / ``S3_USE_HTTPS``, ``HF_TOKEN``), and expects exit 0 with the model's files in DEST. The cache
can be a node-level volume (``MODEL_PROVISIONER_CACHE``): a second pod on the node gets the model with no byte
from the origin, hard-linked into DEST when it is on the same filesystem (docs/kserve.md)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.cli.output import PROG, emit
from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import InsufficientSpace, InvalidInput, NotFound, quote
from model_provisioner.core.refs import parse
from model_provisioner.ops.export import export


def from_kserve_uri(uri: str) -> str:
    """KServe's spellings as our refs: ``hf://org/repo[:revision]`` -> ``hf:org/repo@revision``; the rest
    (``s3://``, ``https://``, ``oci://``, our own ``hf:`` refs and paths) as they are."""
    if uri.startswith("hf://"):
        rest = uri[len("hf://") :].strip("/")
        repo, _, revision = rest.partition(":")
        if repo.count("/") != 1:
            raise InvalidInput(f"{quote(uri)}: an hf:// URI is hf://ORG/REPO[:REVISION]")
        return f"hf:{repo}@{revision}" if revision else f"hf:{repo}"
    return uri


def _settings(args: argparse.Namespace) -> Settings:
    """KServe's S3 variables: ``S3_ENDPOINT`` (host[:port]) with ``S3_USE_HTTPS`` (default 1)."""
    endpoint = os.environ.get("S3_ENDPOINT")
    url = None
    if endpoint and not (os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")):
        scheme = "http" if os.environ.get("S3_USE_HTTPS", "1") == "0" else "https"
        url = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
    return Settings.from_env(cache_dir=args.cache_dir, offline=args.offline or None, s3_endpoint_url=url)


def prepare_dest(dest: str) -> Path:
    """DEST made and writable, its symbolic links resolved once here: the files go where DEST pointed when the
    initializer started, whatever its links say later. A DEST that cannot be made is exit 2 (exit 7 when the
    disk is full), one line naming it."""
    target = Path(os.path.realpath(dest))
    try:
        target.mkdir(parents=True, exist_ok=True)
        if not target.is_dir() or not os.access(target, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not a writable directory")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InsufficientSpace(f"DEST {quote(dest)}", 0, 0) from None
        raise InvalidInput(
            f"DEST {quote(dest)} cannot be created or written ({exc.strerror}); give a writable directory "
            "(KServe mounts /mnt/models)"
        ) from None
    return target


def cmd_storage_initializer(args: argparse.Namespace) -> int:
    pairs = args.pairs
    if len(pairs) < 2 or len(pairs) % 2:
        raise InvalidInput(
            f"storage-initializer takes SRC DEST pairs, got {len(pairs)} argument(s): e.g. "
            "storage-initializer hf://org/repo /mnt/models"
        )
    for src in pairs[::2]:  # every SRC is read, then every DEST made, before any model is fetched
        parse(from_kserve_uri(src))
    dests = [prepare_dest(dest) for dest in pairs[1::2]]
    results = []
    with ModelProvisioner(_settings(args)) as prov:
        for src, dest, target in zip(pairs[::2], pairs[1::2], dests, strict=True):
            ref = from_kserve_uri(src)
            if ref.startswith("s3://") and not ref.endswith("/"):
                try:  # KServe's s3://bucket/prefix is every object under it; a single object also works
                    resolved = prov.ensure_present(ref + "/")
                except NotFound:
                    resolved = prov.ensure_present(ref)
            else:
                resolved = prov.ensure_present(ref)
            report = export(prov, resolved, target)
            results.append(
                {
                    "src": src,
                    "dest": dest,
                    "id": resolved.id,
                    "digest": resolved.digest,
                    "files": report.files,
                    "linked": report.linked,
                    "copied_bytes": report.copied_bytes,
                    "bytes_fetched": resolved.bytes_fetched,
                }
            )
            if not args.quiet and not args.json:
                how = f"{report.linked} linked" if report.linked else f"{report.copied_bytes} bytes copied"
                sys.stderr.write(f"{PROG}: {src} -> {dest}: {report.files} files ({how}), {resolved.digest}\n")
    emit(args, {"models": results}, None)
    return 0
