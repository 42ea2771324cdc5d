"""``engines install``: an engine artifact in the store, recorded in the catalog (docs/engines.md, "Installing
an engine").

- From source (the default): the llama.cpp tree vendored in the pinned llama-cpp-python sdist, found on the
  package index (``package_index.py``) and fetched by the verified transfer against the pinned sha256; or
  any archive given with ``--source REF --digest D [--subdir S]``. Built by ``build.py`` (resumable, with
  progress).
- From a registry (``--from oci://…``): an engine another machine built and pushed (``artifacts.py``),
  fetched like a model (every layer verified, the registry mirrors apply) and copied into the store while
  hashing it again: no compiler.

Either way the result is ``engines/llamacpp/<key>/`` (read-only binary, ``build.json``) and a catalog row with
the source digest, the flags and what ``--version`` says.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from model_provisioner.core.errors import EngineFailed, InvalidInput
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.engines import artifacts
from model_provisioner.engines.binaries import BinaryIdentity, read_record
from model_provisioner.engines.build import BuildOptions, SourceSpec, built_binary
from model_provisioner.engines.host import EngineHost
from model_provisioner.engines.installed import KINDS, InstalledEngine, engine_home
from model_provisioner.engines.llamacpp import version
from model_provisioner.engines.package_index import LLAMACPP_SDIST, sdist_url
from model_provisioner.storage.catalog import EngineRecord


@dataclass(frozen=True)
class InstallRequest:
    kind: str = "llamacpp"
    #: another source archive (with its digest and the llama.cpp tree inside it)
    source: str | None = None
    digest: str | None = None
    subdir: str | None = None
    #: extra cmake flags
    flags: tuple[str, ...] = ()
    #: ``oci://…`` of a pushed engine (no build)
    from_ref: str | None = None
    build: BuildOptions = field(default_factory=BuildOptions)


def install(host: EngineHost, request: InstallRequest) -> InstalledEngine:
    if request.kind not in KINDS:
        raise InvalidInput(
            f"engine {request.kind[:40]!r} cannot be installed; installable: {', '.join(KINDS)} "
            "(tritonserver: pip install nvidia-pytriton, then set engines.triton.binary)"
        )
    if request.from_ref:
        if request.source or request.subdir or request.flags:
            raise InvalidInput("--from installs a built engine as it was built: drop --source, --subdir and --flag")
        identity, origin = artifacts.pull(host, request.from_ref, request.digest), request.from_ref
    else:
        identity, origin = built_binary(host, _source_spec(host, request), request.build), "built"
    return record_installed(host, request.kind, identity, origin)


def _source_spec(host: EngineHost, request: InstallRequest) -> SourceSpec:
    if request.source is None:
        if request.digest or request.subdir:
            raise InvalidInput("--digest and --subdir go with --source (the default source is pinned in the code)")
        pinned = LLAMACPP_SDIST
        digest = f"sha256:{pinned.sha256}"
        # the pinned sources already in the catalog (a reinstall, an offline machine): no index lookup
        held = next(
            (r.id for r in host.catalog.rows_for_listing() if r.digest == digest and r.lifecycle is Lifecycle.ACTIVE),
            None,
        )
        return SourceSpec(held or sdist_url(host.settings, pinned), digest, pinned.subdir, request.flags)
    if not request.digest:
        raise InvalidInput(
            f"--source {request.source[:200]!r} needs --digest sha256:<64 hex>: a build runs whatever the archive "
            "holds, so it must be the archive you meant"
        )
    return SourceSpec(request.source, request.digest, request.subdir or "", request.flags)


def record_installed(host: EngineHost, kind: str, identity: BinaryIdentity, origin: str) -> InstalledEngine:
    home = os.path.dirname(identity.path)
    build = read_record(home)
    key = os.path.basename(home)
    found = version(identity.path)
    if found is None:
        raise EngineFailed(
            f"the installed engine {identity.path} does not answer --version; not recorded: "
            f"`engines uninstall {kind} {key[:12]}` and install it again"
        )
    record = EngineRecord(
        kind=kind,
        key=key,
        target=os.path.basename(identity.path),
        binary_sha256=identity.sha256 or "",
        size_bytes=os.stat(identity.path).st_size,
        version=found,
        source=str(build.get("source", "")),
        source_digest=str(build.get("source_digest", "")),
        subdir=str(build.get("subdir", "")),
        flags=tuple(f for f in _strings(build.get("flags"))),
        origin=str(build.get("origin", origin)),
        build_seconds=_seconds(build.get("seconds")),
        installed_ms=int(time.time() * 1000),
    )
    host.catalog.put_engine(record)
    return InstalledEngine(record, engine_home(host, kind, key))


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
