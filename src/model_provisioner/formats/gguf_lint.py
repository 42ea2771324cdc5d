"""The safety lint of a GGUF before an engine parses it (docs/verification.md, "Before an engine loads a model").

A digest proves the bytes are the ones asked for, not that they are safe to hand to llama.cpp's loader. From the
header alone (the tensor table, never the weights): every tensor's type is one ggml knows, its data lies inside
the file's data section and starts aligned, no two tensors overlap, no name repeats, at most 4 dimensions (ggml's
``GGML_MAX_DIMS``). The chat template is checked by ``formats/template_lint.py``. Each problem names the tensor
and the bytes; the first ``MAX_PROBLEMS`` are kept.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from model_provisioner.formats.gguf import GGUFInfo
from model_provisioner.formats.template_lint import template_problems

#: ggml's GGML_MAX_DIMS: llama.cpp's loader takes no tensor of more dimensions
GGML_MAX_DIMS = 4
MAX_PROBLEMS = 8


@dataclass
class LintReport:
    problems: list[str] = field(default_factory=list)
    #: what was checked: tensors, and the chat templates by key
    tensors: int = 0
    templates: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "tensors": self.tensors, "templates": self.templates}


def lint_gguf(info: GGUFInfo) -> LintReport:
    """``info`` read with ``tensors=True``."""
    report = LintReport(tensors=len(info.tensors))
    _check_tensors(info, report)
    for key, value in sorted(info.kv.items()):
        if key.startswith("tokenizer.chat_template") and isinstance(value, str):
            report.templates.append(key)
            for problem in template_problems(value):
                report.add(f"{key}: {problem}")
    return report


def _check_tensors(info: GGUFInfo, report: LintReport) -> None:
    data_size = info.file_size - info.data_start
    spans: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for tensor in info.tensors:
        name = tensor.name[:80]
        if tensor.name in seen:
            report.add(f"tensor {name!r} is listed twice")
        seen.add(tensor.name)
        if len(tensor.dims) > GGML_MAX_DIMS:
            report.add(f"tensor {name!r} has {len(tensor.dims)} dimensions (ggml takes at most {GGML_MAX_DIMS})")
        if tensor.nbytes is None:
            report.add(f"tensor {name!r} has ggml type {tensor.ggml_type}, which ggml does not know")
            continue
        if tensor.offset % info.alignment:
            report.add(f"tensor {name!r} starts at data offset {tensor.offset}, not aligned to {info.alignment}")
        end = tensor.offset + tensor.nbytes
        if end > data_size:
            report.add(
                f"tensor {name!r} spans data bytes {tensor.offset}-{end}, past the end of the file's data "
                f"section ({data_size} bytes)"
            )
        if tensor.nbytes:
            spans.append((tensor.offset, end, name))
    spans.sort()
    for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(spans):
        if start_b < end_a:
            report.add(f"tensors {name_a!r} and {name_b!r} overlap (from data byte {start_b})")
