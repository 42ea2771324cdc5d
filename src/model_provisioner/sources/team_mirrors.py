"""Team mirrors (``mirrors.models``): where a push of a model lives, and the plan to pull it from there.

A mirror's copy carries the digest the origin was verified to have when it was pushed; the pipeline checks
every byte against it, so a mirror can never poison the cache (docs/refs-and-sources.md).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from typing import Any

from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import InvalidInput, NotFound, ProvisionerError
from model_provisioner.core.refs import ModelRef, OciRef, S3Ref, parse
from model_provisioner.net.registry.client import RegistryClient
from model_provisioner.sources.oci import plan_oci
from model_provisioner.sources.plan import FetchPlan
from model_provisioner.sources.s3 import plan_s3

log = logging.getLogger("model_provisioner")
ANN_SOURCE = "org.model-provisioner.source-id"
ANN_DIGEST = "org.model-provisioner.digest"
ANN_REVISION = "org.model-provisioner.revision"


def _slug(model_id: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")[:80] or "model"


def mirror_ref(root: str, model_id: str) -> OciRef | S3Ref:
    """Where a mirror root keeps ``model_id``: readable slug + a hash of the exact id (no collisions)."""
    key = hashlib.sha256(model_id.encode()).hexdigest()
    base = root.rstrip("/")
    if base.startswith("oci://"):
        ref = parse(f"{base}/{_slug(model_id)}:id-{key[:40]}")
    elif base.startswith("s3://"):
        ref = parse(f"{base}/{_slug(model_id)}-{key[:16]}/")
    else:
        raise InvalidInput(f"mirror root {root!r} must be oci://registry/repo/ or s3://bucket/prefix/")
    assert isinstance(ref, OciRef | S3Ref)
    return ref


def plan_from_mirrors(
    settings: Settings, ref: ModelRef, closers: list[Any], *, signatures: bool = False
) -> FetchPlan | None:
    """The first team mirror (``mirrors.models``) that holds a push of ``ref``; None when none does. Registry
    clients opened on the way are appended to ``closers``."""
    for root in settings.model_mirrors:
        location = mirror_ref(root, ref.id)
        try:
            if isinstance(location, OciRef):
                client = RegistryClient(location.registry, settings)
                closers.append(client)
                plan = plan_oci(location, settings, client, signatures=signatures)
            else:
                plan = plan_s3(location, settings, signatures=signatures)
        except NotFound:
            log.info("%s: not in mirror %s", ref.id, root)
            continue
        except ProvisionerError as exc:
            log.warning("%s: mirror %s failed (%s); trying the next source", ref.id, root, exc)
            continue
        if plan.annotations.get(ANN_SOURCE) != ref.id or not plan.annotations.get(ANN_DIGEST):
            log.warning("%s: %s holds another model (or no digest); skipping this mirror", ref.id, location.id)
            continue
        log.info("%s: pulling from mirror %s", ref.id, location.id)
        metadata = {**plan.metadata, "source": ref.id, "mirror": location.id}
        return replace(plan, metadata=metadata)
    return None
