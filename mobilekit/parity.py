"""Parity: how close an artifact's outputs are to PyTorch's, and whether that is close enough."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Default tolerances per precision. cosine is the floor of the cosine similarity between the
# flattened outputs; psnr_db the floor of PSNR against the reference's own peak-to-peak range.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"cosine": 0.9999, "psnr_db": 60.0},
    "fp16": {"cosine": 0.999, "psnr_db": 40.0},
    "int8-weight": {"cosine": 0.99, "psnr_db": 25.0},
    "int8-dynamic": {"cosine": 0.98, "psnr_db": 20.0},
    "int8-static": {"cosine": 0.95, "psnr_db": 15.0},
}
# Floors on a denoiser's *final sample* after a sampling loop (mobilekit.sampling): looser than the
# one-step floors above, because each step feeds the artifact's own error back in.
SAMPLE_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"cosine": 0.9999, "psnr_db": 50.0},
    "fp16": {"cosine": 0.999, "psnr_db": 35.0},
    "int8-weight": {"cosine": 0.98, "psnr_db": 20.0},
    "int8-dynamic": {"cosine": 0.95, "psnr_db": 15.0},
    "int8-static": {"cosine": 0.90, "psnr_db": 12.0},
}

# Floors on an image-to-image model's output as 8-bit pictures (mobilekit.images), PSNR with a
# peak of 255. ~40 dB is under one level of RMS error; ~30 dB is where differences start to show
# on flat regions; int8-static of a GAN is often near the lower end.
IMAGE_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"psnr_db": 50.0},
    "fp16": {"psnr_db": 40.0},
    "int8-weight": {"psnr_db": 32.0},
    "int8-dynamic": {"psnr_db": 30.0},
    "int8-static": {"psnr_db": 26.0},
}


@dataclass(frozen=True, kw_only=True)
class Parity:
    """Agreement of one artifact with PyTorch, over every parity input (the worst input counts).

    Attributes:
        status: ``pass``, ``fail`` or ``not-run``.
        runtime: the runtime that ran the artifact (e.g. ``executorch``, ``ai-edge-litert``).
        max_abs_error: largest absolute difference over all outputs.
        mean_abs_error: mean absolute difference.
        cosine: cosine similarity of the flattened outputs (1.0 = identical direction).
        psnr_db: peak signal-to-noise ratio in dB, peak = the reference's range.
        tolerance: the floors applied (``cosine``, ``psnr_db``).
        reason: why it was not run, or what failed.
        inputs: how many inputs were compared (the example inputs and held-out ones).
        worst_input: index of the input with the lowest cosine (0: the example inputs).
        held_out: True when inputs other than the example inputs were compared (out-of-sample).
    """

    status: str
    runtime: str | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    cosine: float | None = None
    psnr_db: float | None = None
    tolerance: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    inputs: int = 1
    worst_input: int | None = None
    held_out: bool = False

    @property
    def passed(self) -> bool:
        """True unless the artifact ran and fell outside tolerance."""
        return self.status != "fail"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def not_run(cls, reason: str) -> Parity:
        """A parity record for an artifact that could not be run here."""
        return cls(status="not-run", reason=reason)


def tolerance_for(precision: str, overrides: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """The tolerance of ``precision``, with user overrides applied."""
    tol = dict(DEFAULT_TOLERANCES[precision])
    if overrides and precision in overrides:  # only this table's metrics (image_psnr_db is mobilekit.images')
        tol.update({k: float(v) for k, v in overrides[precision].items() if k in tol})
    return tol


def compare(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray], *, tolerance: Mapping[str, float],
            runtime: str) -> Parity:
    """Compare outputs of an artifact with PyTorch's.

    Args:
        reference: PyTorch outputs, in order.
        actual: the artifact's outputs, in the same order.
        tolerance: floors for ``cosine`` and ``psnr_db``.
        runtime: name of the runtime that produced ``actual``.

    Returns:
        A Parity whose status is ``pass`` or ``fail``.
    """
    if len(reference) != len(actual):
        return Parity(status="fail", runtime=runtime, tolerance=dict(tolerance),
                      reason=f"{len(actual)} outputs, PyTorch gives {len(reference)}")
    refs, outs = [], []
    for i, (r, a) in enumerate(zip(reference, actual, strict=True)):
        r = np.asarray(r, dtype=np.float64)
        a = np.asarray(a, dtype=np.float64)
        if r.size != a.size:
            return Parity(status="fail", runtime=runtime, tolerance=dict(tolerance),
                          reason=f"output {i} has shape {a.shape}, PyTorch gives {r.shape}")
        refs.append(r.ravel())
        outs.append(a.reshape(r.shape).ravel())
    ref, out = np.concatenate(refs), np.concatenate(outs)
    diff = np.abs(ref - out)
    denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(np.dot(ref, out) / denom) if denom > 0 else (1.0 if np.allclose(ref, out) else 0.0)
    mse = float(np.mean((ref - out) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
    ok = np.isfinite(out).all() and cosine >= tolerance["cosine"] and psnr >= tolerance["psnr_db"]
    return Parity(status="pass" if ok else "fail", runtime=runtime, max_abs_error=float(diff.max()),
                  mean_abs_error=float(diff.mean()), cosine=cosine, psnr_db=min(psnr, 999.0),
                  tolerance=dict(tolerance),
                  reason=None if ok else f"cosine {cosine:.6f} (floor {tolerance['cosine']}), "
                                         f"PSNR {psnr:.1f} dB (floor {tolerance['psnr_db']})")


def compare_many(references: Sequence[Sequence[np.ndarray]], actuals: Sequence[Sequence[np.ndarray]], *,
                 tolerance: Mapping[str, float], runtime: str) -> Parity:
    """``compare`` on every input; the artifact is as good as its worst input.

    Cosine and PSNR are the lowest over the inputs, max error the largest, mean error the mean;
    the reason names the first input out of tolerance.
    """
    each = [compare(r, a, tolerance=tolerance, runtime=runtime) for r, a in zip(references, actuals, strict=True)]
    if len(each) == 1:
        return each[0]
    failed = [i for i, p in enumerate(each) if p.status == "fail"]
    if any(p.cosine is None for p in each):  # a structural mismatch (output count or shape)
        i = failed[0]
        return Parity(**{**each[i].to_dict(), "inputs": len(each), "worst_input": i, "held_out": True,
                         "reason": f"input {i}: {each[i].reason}"})
    worst = min(range(len(each)), key=lambda i: (each[i].cosine, each[i].psnr_db))
    reason = None
    if failed:
        i = failed[0]
        reason = f"input {i} of {len(each)}: {each[i].reason}"
    return Parity(status="fail" if failed else "pass", runtime=runtime,
                  max_abs_error=max(p.max_abs_error for p in each),
                  mean_abs_error=float(np.mean([p.mean_abs_error for p in each])),
                  cosine=min(p.cosine for p in each), psnr_db=min(p.psnr_db for p in each),
                  tolerance=dict(tolerance), reason=reason, inputs=len(each), worst_input=worst, held_out=True)
