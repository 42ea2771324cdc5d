"""model-provisioner: this exact model, verified, on this machine, now."""

from __future__ import annotations

from model_provisioner.api.handoff import (
    append_provenance,
    provision_config,
    provision_from_config_to_default_handoff,
    write_engine_handoff,
)
from model_provisioner.api.provisioner import ModelProvisioner
from model_provisioner.config.modelconfig import ModelConfig, load_model_config, load_model_configs
from model_provisioner.config.settings import Settings
from model_provisioner.core.digest import Digest
from model_provisioner.core.errors import (
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
from model_provisioner.core.refs import FileRef, HfRef, ModelRef, OciRef, S3Ref, UrlRef, parse
from model_provisioner.core.version import VERSION
from model_provisioner.core.vocab import Lifecycle
from model_provisioner.storage.catalog import CatalogEntry, CatalogStore, SqliteCatalog
from model_provisioner.verify.results import ResolvedModel, VerificationReport

__version__ = VERSION

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
