"""Uncertainty bands whose claimed coverage is the coverage measured leave-one-model-out.

Every calibration row has a leave-one-model-out prediction (a fit that never saw its
architecture, ``calibrate.leave_one_model_out``) and so a log residual ``log(measured / predicted)``.
Bands are built per *group*, from the residuals of that group only, at four levels:

1. family ``<platform>/<unit>/<precision>`` (``ios/cpu/fp32``),
2. ``<platform>/<unit>/*``,
3. ``*/<unit>/*``,
4. ``*`` (everything).

A group with at least ``MIN_ROWS`` residuals from at least ``MIN_ARCHS`` architectures is
*measured*: its band is ``[ms · exp(k · min(q10, 0)), ms · exp(k · max(q90, 0))]`` over its own
residuals, with the smallest width scale ``k`` (1 to ``MAX_WIDEN``) for which the group's
*nested* coverage reaches ``COVERAGE``: each architecture's rows are checked against the band
built from the group's other architectures only. The band claims exactly that nested
coverage (which can be below 80 % when even ``MAX_WIDEN`` does not get there).

A group with fewer residuals is *sparse*: it borrows the band of the nearest measured parent,
widens its log-width by ``SPARSE_WIDEN``, stretches it over the group's own held-out rows,
claims the lower of the parent's measured coverage and the share of the group's rows that the
borrowed band held before stretching, and says so in ``reason``. A family with no calibration
rows at all (every ``int8-dynamic`` one, for instance) gets the same borrowed, widened band at
estimate time, claiming the parent's coverage, with its reason.

The table is computed by ``build_table`` when ``calibrate.build_loo`` runs and stored in
``calibration_loo.json`` (``"bands"``); ``band_for`` only reads it.
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
from mobilekit.estimation.precision import float_precision

LOO_PATH = Path(__file__).with_name("calibration_loo.json")
LOW_Q, HIGH_Q = 10.0, 90.0
COVERAGE = (HIGH_Q - LOW_Q) / 100.0
MIN_ROWS = 5          # residuals a group needs for a band of its own
MIN_ARCHS = 3         # ... from at least this many architectures (nested coverage needs >= 2 left)
MAX_WIDEN = 2.0       # widest log-width scale tried for a measured group (wider bands say nothing)
SPARSE_WIDEN = 1.5    # log-width scale of a band borrowed from a parent group
_STEP = 0.05


@dataclass(frozen=True, kw_only=True)
class Band:
    """Multiplicative band around an estimate.

    Attributes:
        low_factor: multiply the estimate by this for the low end.
        high_factor: multiply the estimate by this for the high end.
        coverage: share of held-out calibration latencies of the group (``key``) inside its band,
            measured leave-one-model-out (0-1).
        n: residuals of the group the band was built from.
        key: the group (family or broader) whose residuals made the band.
        measured: True when the coverage was measured on this family's own residuals.
        reason: why not (too few or no residuals), None when measured.
    """

    low_factor: float
    high_factor: float
    coverage: float
    n: int
    key: str
    measured: bool = True
    reason: str | None = None


def group_keys(family: str) -> list[str]:
    """The groups a family belongs to, narrowest first."""
    platform, unit, _ = family.split("/")
    return [family, f"{platform}/{unit}/*", f"*/{unit}/*", "*"]


def _in_group(key: str, family: str) -> bool:
    kp, ku, kq = key.split("/") if key != "*" else ("*", "*", "*")
    fp, fu, fq = family.split("/")
    return all(k in ("*", f) for k, f in ((kp, fp), (ku, fu), (kq, fq)))


def _edges(res: np.ndarray, widen: float) -> tuple[float, float]:
    """Log edges of the band over residuals ``res`` at width scale ``widen`` (always holding 0)."""
    lo, hi = np.percentile(res, [LOW_Q, HIGH_Q])
    return widen * min(float(lo), 0.0), widen * max(float(hi), 0.0)


def nested_inside(res: np.ndarray, archs: Sequence[str], widen: float) -> np.ndarray:
    """Per residual: inside the band built from the *other* architectures' residuals of the group."""
    archs_a = np.asarray(archs)
    inside = np.zeros(len(res), dtype=bool)
    for a in sorted(set(archs_a.tolist())):
        held = archs_a == a
        if (~held).sum() == 0:
            continue
        lo, hi = _edges(res[~held], widen)
        inside[held] = (res[held] >= lo) & (res[held] <= hi)
    return inside


def measured_group(res: np.ndarray, archs: Sequence[str]) -> dict[str, Any]:
    """Band entry of a group with enough residuals: the smallest width scale whose nested coverage
    reaches ``COVERAGE`` (or ``MAX_WIDEN``), and the coverage it measures."""
    k = 1.0
    while True:
        cov = float(np.mean(nested_inside(res, archs, k)))
        if cov >= COVERAGE or k >= MAX_WIDEN - 1e-9:
            break
        k = round(k + _STEP, 2)
    lo, hi = _edges(res, k)
    return {"log_low": lo, "log_high": hi, "coverage": cov, "widen": k, "n": int(len(res)),
            "archs": len(set(archs)), "measured": True,
            "in_sample_coverage": float(np.mean((res >= lo) & (res <= hi))), "reason": None}


def _borrowed(parent_key: str, parent: dict[str, Any], why: str, res: np.ndarray | None = None) -> dict[str, Any]:
    lo, hi = SPARSE_WIDEN * parent["log_low"], SPARSE_WIDEN * parent["log_high"]
    note, inside = "", None
    if res is not None and len(res):
        inside = int(np.sum((res >= lo) & (res <= hi)))
        note = f"; {inside} of its {len(res)} held-out rows fell inside, the band is stretched over all of them"
        lo, hi = min(lo, float(res.min())), max(hi, float(res.max()))
    cov = parent["coverage"]
    head = f"{why}: band of {parent_key} (n={parent['n']}) widened x{SPARSE_WIDEN:g}{note}; "
    if inside is not None:  # what the group's own held-out rows say caps the claim
        cov = min(cov, inside / len(res))
        reason = head + (f"coverage {cov:.0%} = the lower of {parent_key}'s measured {parent['coverage']:.0%} and "
                         f"the share of this group's rows inside the borrowed band (too few rows to measure it)")
    else:
        reason = head + f"coverage {cov:.0%} is {parent_key}'s, not measured on this group"
    return {"log_low": lo, "log_high": hi, "coverage": cov, "widen": None,
            "n": int(0 if res is None else len(res)), "archs": None, "measured": False, "from": parent_key,
            "inside_before_stretch": inside, "reason": reason}


def build_table(families: Sequence[str], archs: Sequence[str], measured: Sequence[float],
                predicted: Sequence[float]) -> dict[str, dict[str, Any]]:
    """The band of every group with calibration rows, from held-out predictions.

    Args:
        families: family key per row.
        archs: architecture per row (the unit left out).
        measured: true latency per row (ms).
        predicted: leave-one-model-out prediction per row (ms).

    Returns:
        ``{group key: entry}``, entries with ``log_low``, ``log_high``, ``coverage``, ``n``,
        ``measured`` and ``reason``.
    """
    res = np.log(np.asarray(measured, dtype=float) / np.asarray(predicted, dtype=float))
    fams = np.asarray(families)
    arch_a = np.asarray(archs)
    keys: set[str] = set()
    for f in set(fams.tolist()):
        keys.update(group_keys(f))
    # broadest first, so a sparse group can borrow from its measured parent
    order = sorted(keys, key=lambda k: (-k.count("*"), k))
    table: dict[str, dict[str, Any]] = {}
    for key in order:
        idx = np.array([_in_group(key, f) for f in fams.tolist()])
        r, a = res[idx], arch_a[idx].tolist()
        if len(r) >= MIN_ROWS and len(set(a)) >= MIN_ARCHS:
            table[key] = measured_group(r, a)
            continue
        parent = next((p for p in group_keys(_family_like(key))[1:]
                       if p != key and table.get(p, {}).get("measured")), None)
        why = f"only {len(r)} calibration latencies from {len(set(a))} model(s) in {key}"
        table[key] = _borrowed(parent, table[parent], why, r) if parent else {
            "log_low": float(np.log(0.5)), "log_high": float(np.log(2.0)), "coverage": float("nan"), "n": len(r),
            "measured": False, "reason": why + "; no broader group either: a default 0.5x-2x band"}
    return table


def _family_like(key: str) -> str:
    """A family-shaped key (three parts) for ``group_keys``: ``*/gpu/*`` -> ``*/gpu/*``, ``*`` -> ``*/*/*``."""
    return "*/*/*" if key == "*" else key


def nested_coverage(families: Sequence[str], archs: Sequence[str], measured: Sequence[float],
                    predicted: Sequence[float], table: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Claimed and measured (nested leave-one-model-out) coverage per family and overall.

    A row of a measured family is inside when the band built from the family's *other*
    architectures (at the family's width scale) holds it; a row of a sparse family, when its
    borrowed band holds it.
    """
    table = table if table is not None else build_table(families, archs, measured, predicted)
    res = np.log(np.asarray(measured, dtype=float) / np.asarray(predicted, dtype=float))
    fams = np.asarray(families)
    arch_a = np.asarray(archs)
    inside = np.zeros(len(res), dtype=bool)
    by_fam: dict[str, dict[str, Any]] = {}
    for fam in sorted(set(fams.tolist())):
        idx = fams == fam
        e = table[fam]
        if e["measured"]:
            inside[idx] = nested_inside(res[idx], arch_a[idx].tolist(), e["widen"])
        else:  # the band was stretched over these rows: they cannot test it; count them against the
            # borrowed band before stretching instead
            n_in = e.get("inside_before_stretch") or 0
            inside[np.flatnonzero(idx)[:n_in]] = True
        by_fam[fam] = {"claimed": e["coverage"], "measured": float(np.mean(inside[idx])), "n": int(idx.sum()),
                       "band_measured": bool(e["measured"]), "band_from": e.get("from", fam)}
    claimed = [table[f]["coverage"] for f in fams.tolist()]
    return {"claimed_mean": float(np.nanmean(claimed)) if claimed else float("nan"),
            "measured": float(np.mean(inside)) if len(inside) else float("nan"), "n": int(len(inside)),
            "by_family": by_fam}


# Key of the band table built from leave-one-device-out residuals (nested by phone), for phones
# outside the calibration set: their error includes what a device factor would have absorbed.
UNSEEN_DEVICE_KEY = "bands_unseen_device"


@functools.cache
def shipped_table(key: str = "bands") -> dict[str, dict[str, Any]]:
    """A band table stored in the shipped leave-one-out file (empty when missing): ``"bands"``
    (leave-one-model-out) or ``UNSEEN_DEVICE_KEY``."""
    if not LOO_PATH.is_file():
        return {}
    return dict(json.loads(LOO_PATH.read_text()).get(key, {}))


def _band(key: str, e: dict[str, Any], reason: str | None = None) -> Band:
    return Band(low_factor=float(np.exp(e["log_low"])), high_factor=float(np.exp(e["log_high"])),
                coverage=float(e["coverage"]), n=int(e.get("n") or 0), key=e.get("from", key),
                measured=bool(e["measured"]) and reason is None, reason=reason or e.get("reason"))


def band_for(platform: str, unit: str, precision: str, *, seen_device: bool = True) -> Band:
    """The shipped band of a family; a borrowed, widened one (with its reason) when it has no rows:
    from the family of its float precision if that is measured, else the nearest measured group.

    ``seen_device=False`` (a phone outside the calibration set) reads the table built from
    leave-one-device-out residuals, when one is shipped."""
    table = (shipped_table(UNSEEN_DEVICE_KEY) or shipped_table()) if not seen_device else shipped_table()
    fam = family_key(platform, unit, precision)
    if fam in table:
        return _band(fam, table[fam])
    _, unit_, _ = fam.split("/")
    # first the family of the float precision its unquantized ops run at (its params are used, calibrate.params_for)
    flt = family_key(platform, unit, float_precision(precision, unit_))
    for parent in dict.fromkeys([flt, *group_keys(fam)[1:]]):
        e = table.get(parent)
        if e and e["measured"]:
            b = _borrowed(parent, e, f"no calibration latencies for {fam}")
            return _band(parent, b, b["reason"])
    return Band(low_factor=0.5, high_factor=2.0, coverage=float("nan"), n=0, key="default", measured=False,
                reason=f"no calibration latencies for {fam} and no band table shipped: a default 0.5x-2x band")
