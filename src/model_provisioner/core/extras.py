"""Optional dependencies. The core install (local files, ``https://``, ``hf:``) needs httpx, PyYAML, rich,
huggingface_hub and Jinja2; everything else is an extra, imported only when used. A command that needs an extra that
is not installed is exit 2, one line naming the ``pip install`` that fixes it."""

from __future__ import annotations

import importlib.util

from model_provisioner.core.errors import MissingExtra

#: extra -> the modules it provides (pyproject.toml's [project.optional-dependencies])
EXTRAS: dict[str, tuple[str, ...]] = {
    "s3": ("boto3", "botocore"),
    "oci": ("zstandard",),
    "triton": ("tritonclient", "google.protobuf"),
    "server": ("fastapi", "uvicorn", "prometheus_client"),
    "signing": ("model_signing",),
    "bom": ("cyclonedx", "jsonschema"),
}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked in sys.modules
        return False


def require_extra(extra: str, purpose: str) -> None:
    """Raise ``MissingExtra`` naming the install line unless every module of ``extra`` can be imported."""
    missing = [m for m in EXTRAS[extra] if not installed(m)]
    if missing:
        raise MissingExtra(
            f"{purpose} needs the {extra} extra ({', '.join(missing)} not installed): "
            f"pip install 'model-provisioner[{extra}]'"
        )
