"""Paths that come from a remote source (Hub file names, OCI annotations, tar members, S3 keys).

They are hostile until checked: a model's file path must be relative, without ``.``/``..``/empty segments,
backslashes or control characters, and of sane length. A bad one is a ``CorruptModel`` (exit 4) naming
the path and where it came from; nothing has been written for it.
"""

from __future__ import annotations

import re

from .errors import CorruptModel

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH_CHARS = 1024


def check_relative_path(path: str, where: str) -> str:
    problem = None
    if not path:
        problem = "is empty"
    elif len(path) > MAX_PATH_CHARS:
        problem = f"is longer than {MAX_PATH_CHARS} characters"
    elif _CONTROL_RE.search(path):
        problem = "contains control characters"
    elif "\\" in path:
        problem = "contains a backslash"
    elif path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        problem = "is absolute"
    elif any(seg in ("", ".", "..") for seg in path.split("/")):
        problem = "has an empty, '.' or '..' segment (it would escape the model directory)"
    if problem is not None:
        raise CorruptModel(where, f"refused path {path[:200]!r}: it {problem}")
    return path
