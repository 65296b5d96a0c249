"""Shared helpers of the report's analyses (label issues: _label_issues; duplicates: _duplicates; the chance
level: featpipe.heads.metrics.best_constant)."""

from __future__ import annotations

import math
from typing import Any


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v
