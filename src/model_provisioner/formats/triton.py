"""Triton model repositories: ``<repo>/<model>/config.pbtxt`` + ``<repo>/<model>/<version>/...``.

``config.pbtxt`` is parsed with protobuf's text-format parser against Triton's own ``ModelConfig``
message (``model_config_pb2`` shipped in ``tritonclient``; loaded from its file so that grpc is not
imported). What is checked, each as a ``CorruptModel`` naming the model and file:

- the config parses, and its ``name`` (when set) is the directory's name;
- a non-ensemble model has at least one numeric version directory, and each version holds the file its
  platform/backend loads (``model.onnx``, ``model.plan``, ``model.pt``, ``model.savedmodel/``,
  ``model.py``, … or ``default_model_filename``);
- an ensemble's steps name models that exist in the repository (the missing ones are listed).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import CorruptModel, ProvisionerError
from model_provisioner.core.extras import require_extra

#: the file Triton loads from a version directory, by platform or backend
DEFAULT_FILES = {
    "onnxruntime_onnx": "model.onnx",
    "onnxruntime": "model.onnx",
    "tensorrt_plan": "model.plan",
    "tensorrt": "model.plan",
    "pytorch_libtorch": "model.pt",
    "pytorch": "model.pt",
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_graphdef": "model.graphdef",
    "tensorflow": "model.savedmodel",
    "openvino": "model.xml",
    "python": "model.py",
}


@functools.cache
def model_config_module() -> Any:

    require_extra("triton", "Triton model repositories (Triton's config.pbtxt schema)")
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - checked just above
        raise ProvisionerError("tritonclient is installed without its model_config proto")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    loader_spec = importlib.util.spec_from_file_location("model_provisioner_triton_model_config_pb2", path)
    if loader_spec is None or loader_spec.loader is None:  # pragma: no cover - the file ships with tritonclient
        raise ProvisionerError(f"cannot load {path}")
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module


def parse_config(text: str, where: str) -> Any:
    """Parse one ``config.pbtxt``; a syntax or field error names the file and line."""
    from google.protobuf import text_format  # noqa: PLC0415  # heavy: protobuf, imported only when this path runs

    message = model_config_module().ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise CorruptModel(where, f"config.pbtxt does not parse: {exc}") from None
    return message


def find_repository_root(paths: list[str]) -> str | None:
    """The directory holding ``<model>/config.pbtxt`` entries ("" for the top), or None if there are none."""
    roots = set()
    for path in paths:
        parts = path.split("/")
        if parts[-1] == "config.pbtxt" and len(parts) >= 2:
            roots.add("/".join(parts[:-2]))
    if not roots:
        return None
    return min(roots, key=len)


def inspect_repository(tree: Path, root: str, paths: list[str], subject: str) -> dict[str, Any]:
    """Check a Triton repository laid out under ``tree/root``; returns metadata with the model list."""
    prefix = f"{root}/" if root else ""
    inside = [p[len(prefix) :] for p in paths if p.startswith(prefix)]
    model_dirs = sorted({p.split("/")[0] for p in inside if p.count("/") >= 1 and p.split("/")[1] == "config.pbtxt"})
    models = [_inspect_model(tree, prefix, name, inside, subject) for name in model_dirs]
    known = {m["name"] for m in models}
    for model in models:
        missing = sorted({s for s in model.get("steps", ()) if s not in known})
        if missing:
            raise CorruptModel(
                f"{subject} [{prefix}{model['name']}/config.pbtxt]",
                f"ensemble {model['name']!r} uses models missing from the repository: {', '.join(missing)}",
            )
    return {"models": models, "model_names": [m["name"] for m in models], "repository_root": root}


def _inspect_model(tree: Path, prefix: str, name: str, inside: list[str], subject: str) -> dict[str, Any]:
    """One model directory: its config, versions, and the file its platform or backend loads."""
    where = f"{subject} [{prefix}{name}/config.pbtxt]"
    text = (tree / prefix / name / "config.pbtxt").read_text(encoding="utf-8", errors="replace")
    config = parse_config(text, where)
    if config.name and config.name != name:
        raise CorruptModel(where, f"config name {config.name!r} differs from its directory {name!r}")
    files = [p[len(name) + 1 :] for p in inside if p.startswith(name + "/")]
    versions = sorted({int(f.split("/")[0]) for f in files if "/" in f and _is_version(f.split("/")[0])})
    platform = config.platform or ""
    backend = config.backend or ""
    info: dict[str, Any] = {"name": name, "versions": versions}
    if platform:
        info["platform"] = platform
    if backend:
        info["backend"] = backend
    if config.max_batch_size:
        info["max_batch_size"] = int(config.max_batch_size)
    if platform == "ensemble":
        steps = [step.model_name for step in config.ensemble_scheduling.step]
        if not steps:
            raise CorruptModel(where, "ensemble has no ensemble_scheduling steps")
        info["steps"] = steps
        return info
    if not versions:
        raise CorruptModel(where, f"model {name!r} has no numeric version directory (e.g. {name}/1/)")
    expected = config.default_model_filename or DEFAULT_FILES.get(platform) or DEFAULT_FILES.get(backend)
    for version in versions if expected else ():
        want = f"{version}/{expected}"
        if not any(f == want or f.startswith(want + "/") for f in files):
            loader = platform or backend
            raise CorruptModel(where, f"version {version} of {name!r} lacks {expected} ({loader} loads it)")
    return info


def _is_version(name: str) -> bool:
    """A Triton version directory: ASCII digits only (``"²".isdigit()`` is true, ``int("²")`` fails)."""
    return name.isascii() and name.isdigit()
