"""How the administrator's tools show sizes, ages and times: short, and the same in each."""

from __future__ import annotations

from datetime import datetime, timezone


def size(n: int) -> str:
    """Bytes as "812", "4.2K", "25.0M", "1.3G"."""
    if n < 1024:
        return str(n)
    value = float(n)
    for unit in ("K", "M", "G"):
        value /= 1024
        if value < 1024 or unit == "G":
            break
    return f"{value:.1f}{unit}"


def duration(seconds: float) -> str:
    """A span as "42s", "3m07s", "5h02m", "2d04h"."""
    seconds = int(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def utc(timestamp: float) -> str:
    """A Unix time as "2026-12-05 21:30:00" (UTC)."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
