"""Checks of constructor options the savers share."""

from __future__ import annotations

import datetime as dt


def seconds(value: float | dt.timedelta | None, name: str) -> float | None:
    """A positive duration in seconds (None stays None)."""
    if value is None:
        return None
    result = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if not result > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return result
