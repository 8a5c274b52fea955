"""Bytes and durations as people read them ("1.50 GiB", "12.3 MiB", "4 min"): one formatter for the app and CLIs.

`duration` rounds to what a person plans by (an estimate, a finished run); `clock` keeps the seconds, for a
progress line that is redrawn as time goes by ("ETA 3m05s")."""

from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30


def mib(n: float, digits: int = 0) -> str:
    """`n` bytes in MiB, thousands grouped: mib(3 << 20) == "3 MiB", mib(5000 << 20) == "5,000 MiB"."""
    return f"{n / MIB:,.{digits}f} MiB"


def gib(n: float, digits: int = 1) -> str:
    """`n` bytes in GiB: gib(3 << 30) == "3.0 GiB"."""
    return f"{n / GIB:,.{digits}f} GiB"


def size(n: float, mib_digits: int = 1) -> str:
    """`n` bytes in GiB from 1 GiB up (2 decimals), in MiB below (`mib_digits` decimals: 2 where the figure is
    set beside llama.cpp's own "27.00 MiB", as the KV cache views do)."""
    return gib(n, 2) if n >= GIB else mib(n, mib_digits)


def any_size(n: float) -> str:
    """`n` bytes with the unit that fits, from bytes up (download speeds and small files): "512 B", "48.8 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def quantity(n: int) -> str:
    """A large count, shortened: 270_000_000 -> "270.0 M" (parameters, tokens)."""
    for limit, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            return f"{n / limit:.1f} {unit}"
    return str(n)


def duration(seconds: float) -> str:
    """Seconds up to 90 s, minutes up to 90 min, hours beyond: "45 s", "12 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def clock(seconds: float) -> str:
    """A running time to the second: "12s", "3m05s", "1h02m"."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
