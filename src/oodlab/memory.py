"""Checking that a large array fits in memory before allocating it.

A feature bank of a million rows is gigabytes; allocating one that does not fit makes the
process swap or be killed by the kernel minutes later. :func:`require_memory` compares the
bytes an allocation needs with what the operating system says is available and raises a
one-line :class:`~oodlab.errors.OodlabError` with both sizes first.
"""

from __future__ import annotations

import os
from pathlib import Path

from oodlab.errors import OodlabError


def available_bytes() -> int | None:
    """Memory the OS can give this process now without swapping: ``MemAvailable`` on Linux,
    else free physical pages; ``None`` where neither is known (no check is made then)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def format_bytes(n: float) -> str:
    """``2.46 GB`` (decimal units, as memory sizes are usually quoted)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def require_memory(nbytes: int, what: str, hint: str = "") -> None:
    """Raise :class:`OodlabError` if ``nbytes`` more bytes are not available now.

    Args:
        nbytes: Size of the allocation about to be made.
        what: What it is, for the message (``"knn: the feature bank (1200000 × 512 float32)"``).
        hint: How to need less, appended to the message.
    """
    free = available_bytes()
    if free is not None and nbytes > free:
        raise OodlabError(
            f"{what} needs {format_bytes(nbytes)} of memory but only {format_bytes(free)} is available"
            + (f"; {hint}" if hint else "")
        )


__all__ = ["available_bytes", "format_bytes", "require_memory"]
