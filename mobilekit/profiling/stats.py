"""Latency statistics: percentiles, a distribution-free 95% CI of the median, CV, stopping rule.

The confidence interval of the median uses order statistics (no resampling, no normality
assumption): with ``n`` samples, the number of samples below the true median is
Binomial(n, 1/2), so the sorted samples at ranks ``n/2 ± 1.96·√n/2`` bracket it with ~95%
coverage. For ``n < 6`` no two order statistics reach 95% coverage and the whole range is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_Z95 = 1.959963984540054


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation between order statistics.

    Args:
        samples: values (any unit; the result has the same unit).
        q: percentile in [0, 100].

    Raises:
        ValueError: ``samples`` is empty or ``q`` is out of range.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median_ci95(samples: Sequence[float]) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median, from order statistics.

    Args:
        samples: values (any unit).

    Returns:
        ``(low, high)`` in the unit of ``samples``.

    Example:
        >>> lo, hi = median_ci95(list(range(100)))
        >>> lo < 49.5 < hi
        True
    """
    if not samples:
        raise ValueError("confidence interval of no samples")
    xs = sorted(samples)
    n = len(xs)
    if n < 6:
        return xs[0], xs[-1]
    half = _Z95 * math.sqrt(n) / 2.0
    lo_rank = max(1, math.floor(n / 2.0 - half))       # 1-based ranks
    hi_rank = min(n, math.ceil(n / 2.0 + half) + 1)
    return xs[lo_rank - 1], xs[hi_rank - 1]


def cv(samples: Sequence[float]) -> float:
    """Coefficient of variation: sample standard deviation over the mean (0 for < 2 samples)."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean = sum(samples) / n
    if mean == 0:
        return 0.0
    var = sum((x - mean) ** 2 for x in samples) / (n - 1)
    return math.sqrt(var) / mean


def ci_relative_half_width(samples: Sequence[float]) -> float:
    """Largest distance from the median to an end of its 95% CI, as a fraction of the median."""
    med = percentile(samples, 50)
    lo, hi = median_ci95(samples)
    if med <= 0:
        return math.inf
    return max(med - lo, hi - med) / med


@dataclass(frozen=True, kw_only=True)
class StoppingRule:
    """When a timed loop has enough samples.

    Attributes:
        rel_precision: stop once the 95% CI of the median lies within ± this fraction of it (0.02 = ±2%).
        min_samples: never stop on precision before this many samples.
        max_seconds: stop after this many seconds of timed runs, converged or not.
        max_samples: stop after this many samples, converged or not.
        check_every: evaluate the CI every this many samples (the check sorts all samples).
    """

    rel_precision: float = 0.02
    min_samples: int = 10
    max_seconds: float = 10.0
    max_samples: int = 10_000
    check_every: int = 5

    def __post_init__(self) -> None:
        from mobilekit.errors import ConfigError

        if not 0.0 < self.rel_precision < 1.0:
            raise ConfigError(f"rel_precision must be in (0, 1), got {self.rel_precision}", where="rel_precision")
        if self.min_samples < 1:
            raise ConfigError(f"min_samples must be >= 1, got {self.min_samples}", where="min_samples")
        if not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be > 0, got {self.max_seconds}", where="max_seconds",
                              fix="pass a positive number of seconds, e.g. --max-seconds 5")
        if self.max_samples < self.min_samples:
            raise ConfigError(f"max_samples ({self.max_samples}) is below min_samples ({self.min_samples})",
                              where="max_samples")
        if self.check_every < 1:
            raise ConfigError(f"check_every must be >= 1, got {self.check_every}", where="check_every")

    def should_stop(self, samples: Sequence[float], elapsed_s: float) -> str | None:
        """Why to stop now (``converged``, ``max_seconds``, ``max_samples``), or None to go on.

        Args:
            samples: the timed samples so far (ms).
            elapsed_s: seconds spent in the timed loop so far.
        """
        n = len(samples)
        if n >= self.min_samples and n % self.check_every == 0 and \
                ci_relative_half_width(samples) <= self.rel_precision:
            return "converged"
        if n >= self.max_samples:
            return "max_samples"
        if elapsed_s >= self.max_seconds and n >= 1:
            return "max_seconds"
        return None


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, min, max, std, cv and the 95% CI of the median of ``samples`` (ms in, ms out)."""
    if not samples:
        raise ValueError("summary of no samples")
    n = len(samples)
    mean = sum(samples) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1)) if n > 1 else 0.0
    lo, hi = median_ci95(samples)
    return {"p50_ms": percentile(samples, 50), "p90_ms": percentile(samples, 90), "p99_ms": percentile(samples, 99),
            "mean_ms": mean, "min_ms": min(samples), "max_ms": max(samples), "std_ms": std, "cv": cv(samples),
            "ci95_low_ms": lo, "ci95_high_ms": hi}
