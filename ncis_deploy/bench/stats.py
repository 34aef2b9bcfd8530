"""Latency statistics with trtexec's conventions, as pure functions of the samples.

Conventions (TensorRT ``samples/common/sampleReporting.cpp``, which trtexec prints from):

* **percentile p**: the sorted sample at index ``max(n - 1 - floor((1 - p/100) * n), 0)``: a nearest-rank value,
  never an interpolation. Computed here in exact rational arithmetic, where it equals numpy's
  ``np.percentile(x, p, method="inverted_cdf")`` (the smallest sample with at least p % of the samples at or below
  it). trtexec evaluates ``(1 - p/100) * n`` in float32, which can land one rank higher when ``p * n / 100`` is an
  integer (e.g. p99 of 100 samples: trtexec's float32 gives the maximum, the exact formula the 99th value).
* **median**: the middle sample, or the mean of the two middle samples for an even count (so it can differ from
  the p50 nearest rank).
* **mean**, **min**, **max** as usual; **coefficient of variation** = population standard deviation / mean, in %
  (trtexec's "coefficient of variance").
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np

PERCENTILES = (90, 95, 99)
# trtexec warns when the GPU compute time's coefficient of variation exceeds 1 %; on a shared CPU nearly every run
# exceeds that, so CPU latencies are flagged above 10 %.
HIGH_CV_PCT = {"gpu": 1.0, "cpu": 10.0}
HIGH_DRIFT_PCT = 10.0  # median of the first half vs the second half of the timed iterations


def percentile_index(p: float, n: int) -> int:
    """Index into the ascending samples for percentile ``p`` (trtexec's rule, exact arithmetic)."""
    if n < 1:
        raise ValueError("no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    exclude = math.floor((1 - Fraction(p) / 100) * n)
    return max(n - 1 - exclude, 0)


def percentile(samples: Iterable[float], p: float) -> float:
    s = sorted(float(v) for v in samples)
    return s[percentile_index(p, len(s))]


def median(samples: Iterable[float]) -> float:
    s = sorted(float(v) for v in samples)
    if not s:
        raise ValueError("no samples")
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def summarize(samples: Sequence[float]) -> dict:
    """min / mean / median / p90 / p95 / p99 / max / std / cv_pct / drift_pct of ``samples`` (kept in run order).

    ``std`` is the population standard deviation (trtexec's), ``cv_pct`` = std / mean × 100, ``drift_pct`` the
    relative difference between the medians of the first and second half of the run (None below 4 samples): a slow
    change (thermal, a neighbour's job) shows there even when the spread within each half is small.
    """
    x = [float(v) for v in samples]
    if not x:
        raise ValueError("no samples")
    if any(not math.isfinite(v) or v < 0 for v in x):
        raise ValueError("samples must be finite and >= 0")
    arr = np.asarray(x, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std())  # ddof=0, as trtexec
    out = {"n": len(x), "min": float(arr.min()), "mean": mean, "median": median(x)}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(x, p)
    out["max"] = float(arr.max())
    out["std"] = std
    out["cv_pct"] = std / mean * 100 if mean > 0 else (0.0 if std == 0 else math.inf)
    if len(x) >= 4:
        half = len(x) // 2
        a, b = median(x[:half]), median(x[-half:])
        out["drift_pct"] = abs(b - a) / min(a, b) * 100 if min(a, b) > 0 else 0.0
    else:
        out["drift_pct"] = None
    return out


def scale(stats: dict, factor: float) -> dict:
    """The same statistics for samples multiplied by ``factor`` > 0 (unit changes, step-count extrapolation)."""
    out = dict(stats)
    for k in ("min", "mean", "median", *(f"p{p}" for p in PERCENTILES), "max", "std"):
        out[k] = stats[k] * factor
    return out


def variance_warnings(stats: dict, kind: str = "cpu", what: str = "latency") -> list[str]:
    """trtexec-style warnings for unstable timings: high coefficient of variation, or drift across the run."""
    out = []
    limit = HIGH_CV_PCT[kind]
    if stats["cv_pct"] > limit:
        out.append(f"{what} is unstable: coefficient of variation {stats['cv_pct']:.1f}% > {limit:g}%")
    if stats.get("drift_pct") is not None and stats["drift_pct"] > HIGH_DRIFT_PCT:
        out.append(f"{what} drifted {stats['drift_pct']:.0f}% between the first and second half of the run")
    return out


CONVENTIONS = {
    "percentile": "trtexec nearest rank: sorted[max(n-1-floor((1-p/100)*n), 0)], exact arithmetic "
                  "(= numpy method='inverted_cdf')",
    "median": "middle sample; mean of the two middle samples for even n",
    "std": "population (ddof=0)",
    "cv_pct": "std / mean * 100 (trtexec's coefficient of variance)",
    "drift_pct": "|median(second half) - median(first half)| / smaller median * 100; null below 4 samples",
    "high_cv_pct": HIGH_CV_PCT,
    "high_drift_pct": HIGH_DRIFT_PCT,
}
