"""Summaries of repeated samples: median, inclusive quartiles, per-repeat ratios, slopes.

Pure Python (no torch): the parent process uses them and must never start torch's thread pool.
"""

from __future__ import annotations

import math
import statistics


def median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


def median_or_none(values):
    """Median of the values that are not None, or None when there are none."""
    values = [v for v in values if v is not None]
    return median(values) if values else None


def quartiles(values) -> tuple[float, float]:
    """(q1, q3) of the samples (inclusive method; with 2 samples: their min and max)."""
    values = sorted(values)
    if len(values) == 1:
        return float(values[0]), float(values[0])
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return float(q1), float(q3)


def summary(values) -> dict:
    """Median, quartiles, count and the samples themselves (kept for the raw record)."""
    q1, q3 = quartiles(values)
    return {"median": median(values), "q1": q1, "q3": q3, "n": len(values), "samples": [float(v) for v in values]}


def ratios(a, b) -> dict:
    """Per-repeat ratios a_i / b_i of interleaved samples, summarised: drift of the machine
    between repeats cancels in each ratio."""
    if len(a) != len(b):
        raise ValueError(f"ratios need paired samples, got {len(a)} and {len(b)}")
    return summary([x / y for x, y in zip(a, b)])


def slope(xs, ys) -> float:
    """Least-squares slope of ys on xs (NaN with fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def strict_json(value):
    """NaN / inf -> None, recursively, so perf.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def fmt(x, digits: int = 3) -> str:
    """A number for a table, or "n/a" for a missing or non-finite one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"
