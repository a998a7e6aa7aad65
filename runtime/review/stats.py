"""The two calculations every review figure shares: a ratio that is None over zero, and a percentile."""
from __future__ import annotations

import numpy as np


def ratio(num: float, den: float) -> float | None:
    """``num / den``; None when ``den`` is zero."""
    return num / den if den else None


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile, interpolating linearly between closest ranks (numpy's default); None for none."""
    return float(np.percentile(values, p)) if values else None
