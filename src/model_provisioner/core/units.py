"""Sizes, durations and timestamps as users write them and as the catalog stores them."""

from __future__ import annotations

import re
import time

from model_provisioner.core.errors import InvalidInput

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)


def now_ms() -> int:
    """Wall-clock milliseconds: the catalog's timestamps."""
    return time.time_ns() // 1_000_000


def parse_size(text: str) -> int:
    """``1GB`` = 10^9, ``1GiB`` = 2^30, ``500M`` = 500*10^6, ``123`` = bytes."""
    m = _SIZE_RE.match(str(text))
    if m is None:
        raise InvalidInput(f"invalid size {text!r}; use e.g. 500MB, 1.5GiB, 20G")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    power = " kmgtp".index(unit) if unit else 0
    return int(number * ((1024 if binary else 1000) ** power))


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w``: the unit is required (is ``5`` five seconds or five days?)."""
    m = _DURATION_RE.match(str(text))
    if m is None:
        raise InvalidInput(f"invalid duration {text!r}: give a number with a unit, e.g. 45s, 30m, 12h, 7d, 2w")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2).lower()]


def human_size(n: int) -> str:
    """Binary units (KiB, MiB, GiB) with one decimal: every size the program prints."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
