"""HTTP byte ranges as servers answer them (RFC 9110 §14): ``Content-Range`` of a 206, the complete length a
416 names, and how many body bytes a response may carry."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RE = re.compile(r"bytes \*/(\d+)")


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int  # the last byte index, inclusive
    total: int | None  # None for ``*`` (unknown)


def content_range(headers: Mapping[str, str]) -> ContentRange | None:
    """The ``Content-Range`` of a 206 answer, or None when it has none, one we cannot read, or one that
    contradicts itself: a last byte before the first or past the total, or a ``Content-Length`` other than the
    range's length (a 206 of ``bytes 0-8388607/N`` with ``Content-Length: 1000`` would otherwise leave a hole
    the hash never sees: docs/reliability.md)."""
    got = _CONTENT_RANGE_RE.fullmatch(headers.get("Content-Range", "").strip())
    if got is None:
        return None
    served = ContentRange(int(got.group(1)), int(got.group(2)), None if got.group(3) == "*" else int(got.group(3)))
    if served.end < served.start or (served.total is not None and served.end >= served.total):
        return None
    length = headers.get("Content-Length")
    if length is not None and (not length.strip().isdigit() or int(length) != served.end - served.start + 1):
        return None
    return served


def unsatisfied_length(headers: Mapping[str, str]) -> int | None:
    """The complete length a 416 names (``Content-Range: bytes */N``), if it names one."""
    got = _UNSATISFIED_RE.fullmatch(headers.get("Content-Range", "").strip())
    return int(got.group(1)) if got else None


def range_end(status: int, headers: Mapping[str, str]) -> int | None:
    """The last byte index a 206 answer covers (None for a 200)."""
    served = content_range(headers) if status == 206 else None
    return served.end if served is not None else None


def total_and_start(status: int, headers: Mapping[str, str]) -> tuple[int | None, int]:
    """(the resource's total length if known, the offset the body starts at; -1 for an unreadable 206)."""
    if status == 206:
        served = content_range(headers)
        if served is None:
            return None, -1
        return served.total, served.start
    length = headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), 0


def body_cap(status: int, headers: Mapping[str, str], kept: int, total: int | None) -> int | None:
    """How many body bytes may arrive after ``kept``: the range served (206), else what is left of the expected
    total. None only when nothing bounds it (no length, no expected size: the digest check is what is left)."""
    end = range_end(status, headers)
    if end is not None:
        return end + 1 - kept
    if total is not None:
        return total - kept
    return None
