"""Local directories as the user keeps them: the files of a model directory and its *tree fingerprint*.

A directory is never copied: its files are hashed once, the set gets a repo digest (docs/cache-and-lifecycle.md)
and the entry records a tree fingerprint (device and inode of the directory, total size and the newest mtime
of any file or directory in it). Symlinks are followed only while they stay inside the directory; sockets,
FIFOs and devices are refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from model_provisioner.core.errors import CorruptModel, InvalidInput

MAX_FILES = 100_000


def scan_tree(root: Path, subject: str) -> list[tuple[str, Path]]:
    """[(posix relative path, absolute path)] of every regular file under ``root``, sorted."""
    real_root = os.path.realpath(root)
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if os.path.samefile(dirpath, root):
            dirnames[:] = [d for d in dirnames if d not in (".git", ".cache")]  # VCS and tool caches: not model
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel.startswith(".") and rel.split("/")[0] in (".git", ".cache"):
                continue
            real = os.path.realpath(full)
            if os.path.commonpath([real, real_root]) != real_root:
                raise CorruptModel(subject, f"{rel} is a symlink pointing outside the directory ({real}); refused")
            try:
                st = os.stat(full)
            except OSError as exc:
                raise InvalidInput(f"cannot read {full}: {exc.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                continue  # a symlink to a directory inside the tree: its files are walked under their own name
            if not stat.S_ISREG(st.st_mode):
                raise CorruptModel(subject, f"{rel} is not a regular file (device, FIFO or socket); refused")
            out.append((rel, Path(full)))
            if len(out) > MAX_FILES:
                raise InvalidInput(f"{root} holds more than {MAX_FILES} files; give the model directory itself")
    return sorted(out)


def tree_fingerprint(root: Path, files: list[tuple[str, Path]]) -> tuple[int, int, int, int]:
    st = os.stat(root)
    total = newest = 0
    for _, path in files:
        fst = os.stat(path)
        total += fst.st_size
        newest = max(newest, fst.st_mtime_ns, fst.st_ctime_ns)
    for dirpath, _, _ in os.walk(root):
        dst = os.stat(dirpath)
        newest = max(newest, dst.st_mtime_ns)
    # adding, removing or renaming a file changes its directory's mtime, so the newest mtime covers those too
    return (st.st_dev, st.st_ino, total, newest)
