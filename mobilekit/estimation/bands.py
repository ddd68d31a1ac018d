"""Uncertainty bands from the leave-one-model-out residuals of the calibration set.

A band is ``[ms · exp(q_lo), ms · exp(q_hi)]`` where ``q_lo``/``q_hi`` are the 10th and 90th
percentiles of the log-ratio residuals ``log(measured / predicted)`` of predictions made by
fits that never saw the model. Percentiles are taken per family (platform, unit, precision)
when the family has at least ``MIN_RESIDUALS`` of them, else per compute unit, else over
everything. Each architecture weighs the same in a percentile (rows of one model are
correlated; a family fitted on three models must not look tight because it has 27 rows).

Residuals of one model move together, so percentiles of the pooled residuals under-cover a
new model. The band's log-width is therefore scaled by ``widen`` (stored with the residuals),
the smallest factor for which ``nested_coverage`` (is a held-out model's true latency inside
a band built without it?) reaches the claimed ``COVERAGE`` (80 %).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilekit.estimation.model import family_key

LOO_PATH = Path(__file__).with_name("calibration_loo.json")
LOW_Q, HIGH_Q = 10.0, 90.0
COVERAGE = (HIGH_Q - LOW_Q) / 100.0
MIN_RESIDUALS = 30


@dataclass(frozen=True, kw_only=True)
class Band:
    """Multiplicative band around an estimate.

    Attributes:
        low_factor: multiply the estimate by this for the low end.
        high_factor: multiply the estimate by this for the high end.
        coverage: share of true values the band claims to hold (0-1).
        n: residuals the band was computed from.
        key: family (or broader group) the residuals came from.
    """

    low_factor: float
    high_factor: float
    coverage: float
    n: int
    key: str


def _unit(family: str) -> str:
    return family.split("/")[1]


def _weighted_percentiles(vals: list[tuple[str, float]], qs: tuple[float, float]) -> tuple[float, float]:
    counts: dict[str, int] = {}
    for g, _ in vals:
        counts[g] = counts.get(g, 0) + 1
    order = sorted(vals, key=lambda v: v[1])
    w = np.array([1.0 / counts[g] for g, _ in order])
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    x = np.array([v for _, v in order])
    return float(np.interp(qs[0] / 100.0, cdf, x)), float(np.interp(qs[1] / 100.0, cdf, x))


def band_from(residuals: Sequence[tuple[str, str, float]], family: str, widen: float = 1.0) -> Band:
    """Band for ``family`` from ``(family, architecture, log residual)`` triples.

    Backs off to the compute unit, then to all residuals, when the family has fewer than
    ``MIN_RESIDUALS``; each architecture weighs the same; the log-width is scaled by ``widen``.
    """
    groups = [(family, [(g, r) for f, g, r in residuals if f == family]),
              (f"*/{_unit(family)}/*", [(g, r) for f, g, r in residuals if _unit(f) == _unit(family)]),
              ("*", [(g, r) for _, g, r in residuals])]
    for key, vals in groups:
        if len(vals) >= MIN_RESIDUALS or key == "*":
            if not vals:
                return Band(low_factor=0.5, high_factor=2.0, coverage=COVERAGE, n=0, key="default")
            lo, hi = _weighted_percentiles(vals, (LOW_Q, HIGH_Q))
            return Band(low_factor=float(np.exp(widen * min(lo, 0.0))), high_factor=float(np.exp(widen * max(hi, 0.0))),
                        coverage=COVERAGE, n=len(vals), key=key)
    raise AssertionError("unreachable")


def nested_coverage(families: Sequence[str], groups: Sequence[str], measured: Sequence[float],
                    predicted: Sequence[float], widen: float = 1.0) -> dict[str, Any]:
    """Share of rows inside a band computed from every *other* group's residuals.

    Args:
        families: family key per row.
        groups: model (architecture) per row: the unit left out.
        measured: true latency per row (ms).
        predicted: leave-one-model-out prediction per row (ms).
        widen: log-width scale of the bands.

    Returns:
        ``{"claimed", "measured", "n", "by_family": {family: measured share}}``.
    """
    res = [(f, g, float(np.log(m / p))) for f, g, m, p in zip(families, groups, measured, predicted)]
    inside = np.zeros(len(res), dtype=bool)
    for g in sorted(set(groups)):
        others = [r for r in res if r[1] != g]
        for i in (i for i, gg in enumerate(groups) if gg == g):
            b = band_from(others, families[i], widen)
            inside[i] = b.low_factor * predicted[i] <= measured[i] <= b.high_factor * predicted[i]
    by_fam: dict[str, float] = {}
    for fam in sorted(set(families)):
        idx = [i for i, f in enumerate(families) if f == fam]
        by_fam[fam] = float(np.mean(inside[idx]))
    return {"claimed": COVERAGE, "measured": float(np.mean(inside)) if len(inside) else float("nan"),
            "n": len(inside), "widen": widen, "by_family": by_fam}


def calibrate_widen(families: Sequence[str], groups: Sequence[str], measured: Sequence[float],
                    predicted: Sequence[float]) -> float:
    """The smallest log-width scale (steps of 0.05, at most 4) whose nested coverage reaches ``COVERAGE``."""
    for k in np.arange(1.0, 4.0001, 0.05):
        if nested_coverage(families, groups, measured, predicted, float(k))["measured"] >= COVERAGE:
            return float(round(k, 2))
    return 4.0


@functools.cache
def shipped_residuals() -> tuple[tuple[tuple[str, str, float], ...], float]:
    """``(family, architecture, log residual)`` of every calibration row and the band widening,
    from the shipped leave-one-out file."""
    if not LOO_PATH.is_file():
        return (), 1.0
    doc = json.loads(LOO_PATH.read_text())
    res = tuple((r["family"], r["arch"], float(np.log(r["measured_ms"] / r["predicted_ms"]))) for r in doc["rows"])
    return res, float(doc.get("widen", 1.0))


def band_for(platform: str, unit: str, precision: str) -> Band:
    """The shipped band for a family."""
    res, widen = shipped_residuals()
    return band_from(res, family_key(platform, unit, precision), widen)
