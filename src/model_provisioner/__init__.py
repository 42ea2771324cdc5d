"""model-provisioner: this exact model, verified, on this machine, now."""

from __future__ import annotations

from .catalog import CatalogEntry, CatalogStore, Lifecycle, SqliteCatalog
from .config import Settings
from .digest import Digest
from .errors import (
    ConfigError,
    CorruptModel,
    DigestMismatch,
    ExitCode,
    InsufficientSpace,
    InvalidDigest,
    InvalidInput,
    InvalidModelRef,
    NotFound,
    OfflineError,
    PolicyDenied,
    ProvisionerError,
    TransferFailed,
    UnsupportedFormat,
    UnsupportedScheme,
    VerificationFailed,
)
from .handoff import (
    append_provenance,
    provision_config,
    provision_from_config_to_default_handoff,
    write_engine_handoff,
)
from .modelconfig import ModelConfig, load_model_config, load_model_configs
from .provisioner import ModelProvisioner, ResolvedModel, VerificationReport
from .refs import FileRef, HfRef, ModelRef, OciRef, S3Ref, UrlRef, parse

__version__ = "0.1.0"

# a library prints nothing by itself: its warnings reach whatever logging the application configured
# (the CLI configures its own handler); without any, Python's last-resort handler would print them
import logging as _logging

_logging.getLogger("model_provisioner").addHandler(_logging.NullHandler())

__all__ = [
    "CatalogEntry",
    "CatalogStore",
    "ConfigError",
    "CorruptModel",
    "Digest",
    "DigestMismatch",
    "ExitCode",
    "FileRef",
    "HfRef",
    "InsufficientSpace",
    "InvalidDigest",
    "InvalidInput",
    "InvalidModelRef",
    "Lifecycle",
    "ModelConfig",
    "ModelProvisioner",
    "ModelRef",
    "NotFound",
    "OciRef",
    "OfflineError",
    "PolicyDenied",
    "ProvisionerError",
    "ResolvedModel",
    "S3Ref",
    "Settings",
    "SqliteCatalog",
    "TransferFailed",
    "UnsupportedFormat",
    "UnsupportedScheme",
    "UrlRef",
    "VerificationFailed",
    "VerificationReport",
    "append_provenance",
    "load_model_config",
    "load_model_configs",
    "parse",
    "provision_config",
    "provision_from_config_to_default_handoff",
    "write_engine_handoff",
]
