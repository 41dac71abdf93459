"""Byte and duration formatting shared by the progress line, `report` and `status`."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """Binary units: 512 B, 551.5 KiB, 6.0 MiB, 1.23 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}" if abs(n) >= 100 else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(s: float) -> str:
    """45s, 3m05s, 2h03m."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
