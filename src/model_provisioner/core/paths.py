"""Paths that come from a remote source (Hub file names, OCI annotations, tar members, S3 keys).

They are hostile until checked: a model's file path must be relative, without ``.``/``..``/empty segments,
backslashes or control characters, and of sane length. A bad one is a ``CorruptModel`` (exit 4) naming
the path and where it came from; nothing has been written for it.
"""

from __future__ import annotations

import re

from model_provisioner.core.errors import CorruptModel

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH_CHARS = 1024
#: one path component (NAME_MAX on Linux filesystems)
MAX_NAME_BYTES = 255


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
    elif any(len(seg.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for seg in path.split("/")):
        problem = f"has a name longer than {MAX_NAME_BYTES} bytes, which no common filesystem can store"
    if problem is not None:
        raise CorruptModel(where, f"refused path {path[:200]!r}: it {problem}")
    return path


def check_no_file_dir_clash(paths: list[str], where: str) -> None:
    """A file cannot also be a directory of other files (``config.json`` and ``config.json/x``)."""
    names = set(paths)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in names:
                raise CorruptModel(where, f"{parent[:200]!r} is both a file and the directory of {path[:200]!r}")
