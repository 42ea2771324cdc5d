"""``oci://registry/repo[:tag][@sha256:…]`` refs: ModelPack, Docker Model Runner and ORAS artifacts.

The plan pins a tag to the manifest digest, and lists every layer as a file to fetch. Each layer's
expected sha256 and size come from its descriptor, so the transfer engine verifies every byte while
streaming. How a layer becomes files:

- **CNCF ModelPack** (``application/vnd.cncf.model.*``, older ``application/vnd.cnai.model.*``): raw
  layers are files named by ``org.cncf.model.filepath`` (or ``org.cnai.model.filepath``); ``.tar``,
  ``.tar+gzip``, ``.tar+zstd`` layers are unpacked.
- **Docker Model Runner** (``application/vnd.docker.ai.gguf.v3``, ``.safetensors``, ``.mmproj``,
  ``.license``, …): named by ``org.opencontainers.image.title`` or a default per media type.
- **Ollama** (``application/vnd.ollama.image.model``, ``.projector``, ``.license``, ``.template``, …):
  default names per type (``model.gguf``, ``mmproj.gguf``, ``LICENSE``, …).
- **ORAS / generic artifacts**: files named by ``org.opencontainers.image.title`` (ORAS gives plain files
  the generic layer type ``application/vnd.oci.image.layer.v1.tar``); layers marked
  ``io.deis.oras.content.unpack`` (ORAS directories) and untitled image layers are unpacked.

Every name is checked (``paths.check_relative_path``) before anything is fetched.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from model_provisioner.config.settings import Settings
from model_provisioner.core.errors import CorruptModel, PolicyDenied, ProvisionerError
from model_provisioner.core.paths import check_relative_path
from model_provisioner.core.refs import OciRef
from model_provisioner.net.registry.client import RegistryClient
from model_provisioner.net.registry.manifests import MANIFEST_ACCEPT, Manifest
from model_provisioner.net.registry.referrers import SIGSTORE_BUNDLE, find_referrers
from model_provisioner.sources.plan import FetchPlan, RemoteFile
from model_provisioner.storage.unpack import compression_of
from model_provisioner.transfer.types import Source

log = logging.getLogger("model_provisioner")

PATH_ANNOTATIONS = ("org.cncf.model.filepath", "org.cnai.model.filepath", "org.opencontainers.image.title")
DOCKER_AI_DEFAULT_NAMES = {
    "application/vnd.docker.ai.gguf.v3": "model.gguf",
    "application/vnd.docker.ai.safetensors": "model.safetensors",
    "application/vnd.docker.ai.mmproj": "model.mmproj",
    "application/vnd.docker.ai.license": "LICENSE",
    "application/vnd.docker.ai.chat.template.jinja": "template.jinja",
    # Ollama's registry speaks the distribution spec too (the ids `import` gives Ollama models)
    "application/vnd.ollama.image.model": "model.gguf",
    "application/vnd.ollama.image.projector": "mmproj.gguf",
    "application/vnd.ollama.image.license": "LICENSE",
    "application/vnd.ollama.image.template": "template",
    "application/vnd.ollama.image.system": "system",
    "application/vnd.ollama.image.params": "params.json",
}
#: an engine pushed by ``engines push`` (engines/artifacts.py): fetched like a model, laid out as an engine
ENGINE_ARTIFACT = "application/vnd.model-provisioner.engine.v1"
CONFIG_TYPES = {
    "application/vnd.cncf.model.config.v1+json": "modelpack",
    "application/vnd.cnai.model.config.v1+json": "modelpack",
    "application/vnd.docker.ai.model.config.v0.1+json": "docker-model",
    "application/vnd.docker.ai.model.config.v0.2+json": "docker-model",
}
ORAS_UNPACK = "io.deis.oras.content.unpack"
MODELPACK_MANIFEST = "application/vnd.cncf.model.manifest.v1+json"


def family_of(manifest: Manifest) -> str:
    family = CONFIG_TYPES.get(manifest.config.media_type)
    if family:
        return family
    modelpack = ("application/vnd.cncf.model", "application/vnd.cnai.model")
    if (manifest.artifact_type or "").startswith(modelpack) or any(
        layer.media_type.startswith(modelpack) for layer in manifest.layers
    ):
        return "modelpack"
    if any(layer.media_type.startswith("application/vnd.docker.ai.") for layer in manifest.layers):
        return "docker-model"
    if any(layer.media_type.startswith("application/vnd.ollama.image.") for layer in manifest.layers):
        return "ollama"
    return "oras"


def layer_files(manifest: Manifest, subject: str) -> list[tuple[str, Any, str | None]]:
    """[(path or archive name, descriptor, compression)] for every layer, names checked."""
    out: list[tuple[str, Any, str | None]] = []
    seen: set[str] = set()
    for index, layer in enumerate(manifest.layers):
        compression = compression_of(layer.media_type)
        name = next((layer.annotations[k] for k in PATH_ANNOTATIONS if layer.annotations.get(k)), None)
        if (
            compression is not None
            and name is not None
            and layer.media_type.startswith("application/vnd.oci.image.layer.")
            and layer.annotations.get(ORAS_UNPACK, "").lower() != "true"
        ):
            # ORAS pushes plain files with the generic layer type and a title; only its packed directories
            # carry the unpack annotation
            compression = None
        if compression is not None:
            # archives unpack at the model root; a name is only for messages (and is checked all the same)
            if name is not None:
                check_relative_path(name, f"{subject}: layer {layer.digest[:19]} annotation")
            out.append((f".layers/{index:04d}-{layer.hex[:12]}.tar", layer, compression))
            continue
        if name is None:
            name = DOCKER_AI_DEFAULT_NAMES.get(layer.media_type)
        if name is None:
            raise CorruptModel(
                subject,
                f"layer {layer.digest} ({layer.media_type}) has no file name "
                f"(annotation {PATH_ANNOTATIONS[0]} or {PATH_ANNOTATIONS[2]}) and is not an archive",
            )
        check_relative_path(name, f"{subject}: layer {layer.digest[:19]} annotation")
        if name in seen:
            raise CorruptModel(subject, f"two layers claim the file name {name!r}")
        seen.add(name)
        out.append((name, layer, None))
    if not out:
        raise CorruptModel(subject, "the manifest has no layers: nothing to provision")
    return out


def plan_oci(ref: OciRef, settings: Settings, client: RegistryClient, *, signatures: bool = False) -> FetchPlan:
    manifest = client.resolve(ref.repository, ref.reference, ref.id)
    if ref.digest and manifest.digest != ref.digest:
        log.info("%s: index %s resolved to manifest %s", ref.id, ref.digest, manifest.digest)
    family = family_of(manifest)
    config: dict[str, Any] = {}
    if manifest.config.media_type in CONFIG_TYPES and manifest.config.size > 0:
        raw = client.read_blob(ref.repository, manifest.config, ref.id, limit=1 << 20)
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            raise CorruptModel(ref.id, f"the model config blob {manifest.config.digest} is not JSON") from None
        if isinstance(parsed, dict):
            config = parsed
    headers = client.auth_header(ref.repository)
    files = []
    for path, layer, compression in layer_files(manifest, ref.id):
        origin = Source(
            client.blob_url(ref.repository, layer.digest),
            headers=headers,
            label=f"registry {ref.registry}",
            reauth=functools.partial(client.reauth, ref.repository),
        )
        # mirrors first (no registry credentials go to them), the registry last; every byte is checked against
        # the layer's digest, so a mirror serving other bytes is refused and the next source used
        mirrors = tuple(
            Source(url, label=label, pull_through=True)
            for url, label in client.mirror_blob_urls(ref.repository, layer.digest)
        )
        files.append(
            RemoteFile(path=path, sources=(*mirrors, origin), size=layer.size, sha256=layer.hex, unpack=compression)
        )
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    summary = {
        k: inner[k]
        for k in ("format", "quantization", "parameters", "paramSize", "architecture", "context_size")
        if isinstance(inner, dict) and isinstance(inner.get(k), str | int)
    }
    # credentials were sent: a repository anonymous callers cannot read is restricted (pipeline/access.py)
    restricted = client.used_login and not registry_grants_access(
        ref.registry, ref.repository, manifest.digest, settings, anonymous=True
    )
    metadata: dict[str, Any] = {
        **({"access": "restricted"} if restricted else {}),
        "oci": {
            "registry": ref.registry,
            "repository": ref.repository,
            "tag": ref.tag,
            "manifest_digest": manifest.digest,
            "family": family,
            **({"config": summary} if summary else {}),
        },
        "source": ref.id,
    }
    revision = manifest.annotations.get("org.model-provisioner.revision") or manifest.digest.split(":", 1)[1][:12]
    return FetchPlan(
        layout="engine" if manifest.artifact_type == ENGINE_ARTIFACT else "auto",
        files=tuple(files),
        revision=revision,
        metadata=metadata,
        annotations=dict(manifest.annotations),
        signatures=tuple(
            find_referrers(client, ref.repository, manifest.digest, SIGSTORE_BUNDLE, ref.id) if signatures else ()
        ),
    )


def registry_grants_access(
    registry: str,
    repository: str,
    reference: str,
    settings: Settings,
    *,
    anonymous: bool = False,
    client: RegistryClient | None = None,
) -> bool | None:
    """Whether the registry lets the caller's credentials (or none: ``anonymous``) read ``reference`` of
    ``repository``: True, False, or None when it could not be asked. ``client``: one whose login is already
    resolved (a credential helper runs once)."""
    with client or RegistryClient(registry, settings, anonymous=anonymous) as client:
        try:
            response = client.request(
                "HEAD", f"/v2/{repository}/manifests/{reference}", repository, headers={"Accept": MANIFEST_ACCEPT}
            )
        except PolicyDenied:
            return False
        except ProvisionerError:
            return None
        if response.status_code == 200:
            return True
        return False if response.status_code in (401, 403, 404) else None
