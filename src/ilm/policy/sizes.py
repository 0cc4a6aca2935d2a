"""Byte sizes in policies: ``500MB``, ``1.5 GB``, ``2GiB``, ``1000000``.

KB, MB, GB and TB are decimal (powers of 1000, as storage prices are quoted);
KiB, MiB, GiB and TiB are binary (powers of 1024). A bare number is bytes.
"""

from __future__ import annotations

import re

__all__ = ["SizeError", "parse_size", "format_size"]


class SizeError(ValueError):
    """A text that is not a byte size."""


_UNITS = {
    "": 1, "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def parse_size(text: object) -> int:
    """Parse a size into bytes; raise SizeError naming the accepted units."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise SizeError(f"{text!r} is not a size such as 500MB or 2GiB")
    raw = str(text).strip()
    m = _SIZE.fullmatch(raw)
    unit = m.group(2).upper() if m else ""
    if not m or unit not in _UNITS:
        raise SizeError(f"{raw!r} is not a size: use a number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    """A short decimal rendering such as ``1.5 GB``."""
    for unit, factor in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} B"
