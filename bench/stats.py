"""Summaries of measured samples (percentiles, median/min/max) and how durations are written."""

import math
import statistics


def pct(values, q):
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return None
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def stats(values):
    if not values:
        return None
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_ms(v):
    return "-" if v is None else (f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms")


def fmt_s(st):
    if not st:
        return "-"
    return f"{st['median']:.3f} s ({st['min']:.3f}-{st['max']:.3f})" if st["n"] > 1 else f"{st['median']:.3f} s"
