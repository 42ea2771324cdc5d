"""The safety lint, enforced before an engine loads a model (docs/verification.md, "Before an engine loads a
model"): ``up``, ``run`` and the gateway all start llama-server through ``llamacpp.launch``, which calls
``check_before_start``. The file is opened by the cache's rules (no link followed, checked after open) and only its
header is read. ``engines.safety_lint: warn`` lowers a refusal to a warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from model_provisioner.core.errors import VerificationFailed
from model_provisioner.formats.gguf import read_gguf_fd
from model_provisioner.formats.gguf_lint import LintReport, lint_gguf
from model_provisioner.storage.safefs import open_in_cache

log = logging.getLogger("model_provisioner")


def lint_file(path: str | os.PathLike[str], subject: str) -> LintReport:
    fd = open_in_cache(path, os.O_RDONLY, single_link=False)
    try:
        return lint_gguf(read_gguf_fd(fd, subject, tensors=True))
    finally:
        os.close(fd)


def check_before_start(path: Path, subject: str, mode: str) -> LintReport:
    """Refuse (exit 4) a GGUF the lint rejects, naming what it found, unless ``mode`` is ``warn``."""
    report = lint_file(path, subject)
    if report.ok:
        return report
    found = "; ".join(report.problems)
    if mode == "warn":
        log.warning("%s: the safety lint found: %s (engines.safety_lint: warn: starting it anyway)", subject, found)
        return report
    raise VerificationFailed(
        f"{subject} refused before llama-server loads it: {found}; if you trust this file, set "
        "engines.safety_lint: warn",
        reason="unsafe_model",
    )
