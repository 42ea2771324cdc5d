"""``s3://bucket/key`` (one object) and ``s3://bucket/prefix/`` (a directory, e.g. a Triton repository).

boto3 does what needs credentials and the S3 API (the standard credential chain, region, ``endpoint_url``
for S3-compatible stores, retries in ``standard`` mode): ``HeadObject`` (size, ETag and, with
``ChecksumMode=ENABLED``, the object's full-object ``ChecksumSHA256``), ``ListObjectsV2`` for prefixes,
and a pre-signed ``GET`` URL per object. The bytes then come through our transfer engine like every
other scheme: resume, parallel ranges when the connection is slow, sha256 while streaming, the policy's
host checks. Pre-signed URLs carry their signature in the query string, which is redacted everywhere and
is not part of the partial file's key, so a resumed download survives a new signature.

A prefix written by ``push`` holds ``model-provisioner.json`` (id, digest, files with sha256 and size):
its digests are then enforced for every file.
"""

from __future__ import annotations

import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import CorruptModel, NotFound, PolicyDenied, ProvisionerError, TransferFailed
from model_provisioner.core.extras import require_extra
from model_provisioner.core.paths import check_relative_path
from model_provisioner.core.redact import redact_text, redact_url
from model_provisioner.core.refs import S3Ref
from model_provisioner.sources.plan import FetchPlan, RemoteFile
from model_provisioner.transfer.types import Source

log = logging.getLogger("model_provisioner")

MANIFEST_NAME = "model-provisioner.json"
MAX_OBJECTS = 10_000
PRESIGN_EXPIRES_S = 6 * 3600


def s3_client(settings: Settings) -> Any:

    require_extra("s3", "s3:// refs and pushes to S3")
    import boto3  # noqa: PLC0415  # heavy: boto3, imported only when this path runs
    from botocore.config import Config  # noqa: PLC0415  # heavy: boto3, imported only when this path runs

    t = settings.transfer
    config = Config(
        retries={"mode": "standard", "max_attempts": max(1, t.attempts)},
        connect_timeout=t.connect_timeout_s,
        read_timeout=t.stall_timeout_s,
        signature_version="s3v4",
        max_pool_connections=16,
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=config,
        verify=t.ca_bundle if t.ca_bundle else None,
    )


def _credential_source(client: Any) -> str:
    try:
        creds = client._request_signer._credentials  # the resolved credentials of this client
    except AttributeError:  # pragma: no cover - botocore internals moved
        return "the AWS credential chain"
    if creds is None:
        return "no credentials"
    method = getattr(creds, "method", "unknown")
    key_id = getattr(creds, "access_key", "") or ""
    return f"credentials from {method} (access key id ending {key_id[-4:]})" if key_id else f"credentials from {method}"


def s3_error(exc: Exception, client: Any, what: str) -> ProvisionerError:
    """A boto error as one of ours: names the bucket/key and the credential source, never a secret."""
    from botocore.exceptions import (  # noqa: PLC0415
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return PolicyDenied(
            f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "~/.aws/credentials or an instance role"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
            detail = "the bucket does not exist" if code == "NoSuchBucket" else "no such object or prefix"
            return NotFound(f"{what}: {detail} at {client.meta.endpoint_url}; check the bucket and key")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden") or status == 403:
            return PolicyDenied(
                f"{what}: access denied ({code or status}) with {_credential_source(client)}; check the "
                "credentials and the bucket policy"
            )
        return TransferFailed(f"{what}: S3 error {code or status}: {redact_text(str(error.get('Message', '')))[:200]}")
    if isinstance(exc, EndpointConnectionError):
        return TransferFailed(f"{what}: cannot reach the S3 endpoint {redact_url(client.meta.endpoint_url)}")
    return TransferFailed(f"{what}: {type(exc).__name__}: {redact_text(str(exc))[:200]}")


def _checksum_hex(head: dict[str, Any]) -> str | None:
    """The full-object SHA-256 of an object, when S3 has one (composite multipart checksums are not)."""
    value = head.get("ChecksumSHA256")
    if not isinstance(value, str) or "-" in value or head.get("ChecksumType") == "COMPOSITE":
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def _call(client: Any, what: str, method: str, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415  # heavy: boto3, imported only when this path runs

    try:
        return getattr(client, method)(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise s3_error(exc, client, what) from None


def check_endpoint(client: Any, settings: Settings) -> None:

    url = client.meta.endpoint_url
    parts = urlsplit(url)
    settings.policy.check_host(parts.scheme, parts.hostname or "", redact_url(url))


def _object_file(client: Any, bucket: str, key: str, path: str, what: str, expected: str | None = None) -> RemoteFile:
    head = _call(client, what, "head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    checksum = _checksum_hex(head)
    if expected is not None and checksum is not None and expected != checksum:
        raise CorruptModel(what, f"the manifest says sha256:{expected} but S3's ChecksumSHA256 says sha256:{checksum}")
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_EXPIRES_S
    )
    return RemoteFile(
        path=path,
        sources=(Source(url, label=f"s3 {bucket}", bounded_first=False),),
        size=int(head.get("ContentLength", 0)),
        sha256=expected or checksum,
    )


def plan_s3(
    ref: S3Ref, settings: Settings, *, expected_sha256: str | None = None, signatures: bool = False
) -> FetchPlan:
    client = s3_client(settings)
    check_endpoint(client, settings)
    if not ref.is_prefix:
        file = _object_file(client, ref.bucket, ref.key, ref.display_name, ref.id)
        if expected_sha256 and file.sha256 is None:
            file = replace(file, sha256=expected_sha256)
        return FetchPlan(layout="file", files=(file,), metadata={"source": ref.id})
    keys: dict[str, int] = {}
    paginator = client.get_paginator("list_objects_v2")
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415  # heavy: boto3, imported only when this path runs

    try:
        for page in paginator.paginate(Bucket=ref.bucket, Prefix=ref.key):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue  # "directory" markers
                keys[key] = int(obj.get("Size", 0))
                if len(keys) > MAX_OBJECTS:
                    raise CorruptModel(ref.id, f"the prefix holds more than {MAX_OBJECTS} objects; refusing")
    except (BotoCoreError, ClientError) as exc:
        raise s3_error(exc, client, ref.id) from None
    if not keys:
        raise NotFound(
            f"{ref.id}: no objects under the prefix at {client.meta.endpoint_url}; check the bucket and prefix"
        )
    rel = {key: check_relative_path(key[len(ref.key) :], f"{ref.id}: S3 key {key!r}") for key in keys}
    manifest_key = ref.key + MANIFEST_NAME
    annotations: dict[str, str] = {}
    expected: dict[str, str] = {}
    bundles: tuple[bytes, ...] = ()
    wanted = [k for k in keys if k != manifest_key]
    if manifest_key in keys:
        manifest = _read_manifest(client, ref, manifest_key)
        annotations = {
            "org.model-provisioner.source-id": manifest["id"],
            "org.model-provisioner.digest": manifest["digest"],
        }
        if manifest.get("revision"):
            annotations["org.model-provisioner.revision"] = str(manifest["revision"])
        expected = {f["path"]: f["sha256"] for f in manifest["files"]}
        missing = sorted(p for p in expected if ref.key + p not in keys)
        if missing:
            raise CorruptModel(ref.id, f"the prefix lacks files its {MANIFEST_NAME} lists: {', '.join(missing[:10])}")
        wanted = [ref.key + p for p in expected]
        bundles = _signatures_of(client, ref, manifest, signatures)
    with ThreadPoolExecutor(max_workers=8) as pool:
        files = list(
            pool.map(
                lambda key: _object_file(
                    client, ref.bucket, key, rel[key], f"{ref.id} [{rel[key]}]", expected.get(rel[key])
                ),
                sorted(wanted),
            )
        )
    return FetchPlan(
        layout="auto",
        files=tuple(files),
        revision=annotations.get("org.model-provisioner.revision"),
        metadata={"source": ref.id},
        annotations=annotations,
        signatures=bundles,
    )


def _signatures_of(client: Any, ref: S3Ref, manifest: dict[str, Any], wanted: bool) -> tuple[bytes, ...]:
    """The signatures the manifest lists beside the files (``push --sign``), read when ``wanted``."""
    names = manifest.get("signatures") if wanted else None
    return tuple(_read_signature(client, ref, name) for name in names[:16]) if isinstance(names, list) else ()


def _read_signature(client: Any, ref: S3Ref, name: object) -> bytes:
    """A signature the manifest lists beside the files (``push --sign``), at most 1 MiB."""
    if not isinstance(name, str) or "/" in name or not name.endswith(".sig"):
        raise CorruptModel(f"{ref.id}{MANIFEST_NAME}", f"signature name {str(name)[:80]!r} is not a NAME.sig beside it")
    raw: bytes = _call(client, ref.id, "get_object", Bucket=ref.bucket, Key=ref.key + name)["Body"].read((1 << 20) + 1)
    if len(raw) > 1 << 20:
        raise CorruptModel(f"{ref.id}{name}", "a signature over 1 MiB; refused")
    return raw


def _read_manifest(client: Any, ref: S3Ref, key: str) -> dict[str, Any]:
    body = _call(client, ref.id, "get_object", Bucket=ref.bucket, Key=key)["Body"]
    raw = body.read(4 << 20 + 1)
    where = f"{ref.id}{MANIFEST_NAME}"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise CorruptModel(where, "not valid JSON") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not isinstance(data.get("id"), str) or not isinstance(data.get("digest"), str):
        raise CorruptModel(where, "expected {id, digest, files: [{path, sha256, size}]}")
    for f in files:
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)):
            raise CorruptModel(where, "every file needs a path and a sha256")
        check_relative_path(f["path"], where)
        if len(f["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in f["sha256"]):
            raise CorruptModel(where, f"{f['path']}: sha256 must be 64 lower-case hex characters")
    return data  # type: ignore[no-any-return]
