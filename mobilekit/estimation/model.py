"""The calibrated roofline: time per op on one compute unit of one phone.

For an op with ``F`` FLOPs moving ``B`` bytes on a unit with peak ``P`` (GOP/s at the op's
arithmetic precision) and DRAM bandwidth ``W`` (GB/s)::

    t = max(d · F / (P · e_c), B / (W · e_m)) + o          (one op; o = 0 for fused elementwise ops)
    T = Σ t + c                                             (one inference)

``e_c`` (compute efficiency), ``e_m`` (memory efficiency), ``o`` (per-op overhead, µs),
``c`` (fixed cost per inference, ms) and ``d`` (how many times dearer a FLOP of this op class
is than a dense-conv FLOP: ``dw_factor`` for depthwise convs, ``mm_factor`` for matmuls and
attention, 1 for other ops) are fitted per family (platform, compute unit,
precision) on the calibration set (``fit.py``). Ops the unit's delegate does not take (``other`` ops such as sort, topk,
nonzero, gather-by-index) run on the CPU at its fp32 rate, and each switch between the
accelerator and the CPU costs ``TRANSITION_MS``. Integer-only index math is free: exporters
fold it into constants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobilekit.estimation.graph import KINDS, PRECISION_BYTES

# Cost of handing tensors between an accelerator delegate and the CPU (ms per switch).
TRANSITION_MS = 0.1
# Kinds a GPU/NPU delegate leaves to the CPU.
_FALLBACK_KINDS = frozenset({"other"})
_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}


@dataclass(frozen=True, kw_only=True)
class FamilyParams:
    """Fitted efficiencies of one (platform, compute unit, precision) family.

    Attributes:
        eff_compute: achieved share of the peak GOP/s on compute-bound ops (0-1+).
        eff_memory: achieved share of DRAM bandwidth on memory-bound ops (0-1+).
        overhead_us: fixed cost per op (µs): dispatch, sync, small-kernel inefficiency.
        fixed_ms: fixed cost per inference (ms): invocation, input/output copies.
        dw_factor: cost multiplier of a depthwise-conv FLOP relative to a dense-conv one.
        mm_factor: cost multiplier of a matmul/attention FLOP relative to a dense-conv one
            (NPUs are built around convolution; leave-one-model-out showed transformers running
            slower than their FLOPs say there, conv nets faster).
        n: calibration rows the family was fitted on (0 = prior only).
        key: the family the numbers were fitted on (after backing off to a broader one).
    """

    eff_compute: float
    eff_memory: float
    overhead_us: float
    fixed_ms: float = 0.0
    dw_factor: float = 1.0
    mm_factor: float = 1.0
    n: int = 0
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"eff_compute": self.eff_compute, "eff_memory": self.eff_memory, "overhead_us": self.overhead_us,
                "fixed_ms": self.fixed_ms, "dw_factor": self.dw_factor, "mm_factor": self.mm_factor, "n": self.n,
                "key": self.key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FamilyParams:
        """Inverse of ``to_dict``."""
        return cls(eff_compute=float(d["eff_compute"]), eff_memory=float(d["eff_memory"]),
                   overhead_us=float(d["overhead_us"]), fixed_ms=float(d.get("fixed_ms", 0.0)),
                   dw_factor=float(d.get("dw_factor", 1.0)), mm_factor=float(d.get("mm_factor", 1.0)),
                   n=int(d.get("n", 0)), key=str(d.get("key", "")))


def family_key(platform: str, unit: str, precision: str) -> str:
    """``"<platform>/<unit>/<precision>"``; ``cpu1`` (one core) shares the ``cpu`` family."""
    return f"{platform}/{'cpu' if unit == 'cpu1' else unit}/{precision}"


@dataclass(frozen=True)
class OpArrays:
    """The ops of one model as arrays (one entry per op), ready for vectorised pricing."""

    kind: np.ndarray       # int index into KINDS
    flops: np.ndarray
    weight_elems: np.ndarray
    act_elems: np.ndarray
    int_only: np.ndarray   # bool

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> OpArrays:
        """From ``OpCost.to_row()`` lists ``[kind, flops, weight_elems, act_elems, int_only]``."""
        if not rows:
            z = np.zeros(0)
            return cls(z.astype(int), z, z, z, z.astype(bool))
        return cls(kind=np.array([_KIND_INDEX[r[0]] for r in rows], dtype=int),
                   flops=np.array([float(r[1]) for r in rows]),
                   weight_elems=np.array([float(r[2]) for r in rows]),
                   act_elems=np.array([float(r[3]) for r in rows]),
                   int_only=np.array([bool(r[4]) for r in rows]))

    def bytes_at(self, precision: str) -> np.ndarray:
        """Bytes moved per op at ``precision``."""
        wb, ab = PRECISION_BYTES[precision]
        return self.weight_elems * wb + self.act_elems * ab

    def fused(self) -> np.ndarray:
        """Elementwise ops, which runtimes fuse into the op that produced their input: they pay
        for their bytes and FLOPs but not the per-op overhead."""
        return self.kind == _KIND_INDEX["elementwise"]

    def taken(self, unit: str) -> np.ndarray:
        """Which ops the unit's delegate runs (True) rather than handing them to the CPU."""
        if unit in ("cpu", "cpu1"):
            return np.ones(len(self.kind), dtype=bool)
        fallback = np.isin(self.kind, [_KIND_INDEX[k] for k in _FALLBACK_KINDS]) & ~self.int_only
        return ~fallback


_MM_KINDS = (_KIND_INDEX["matmul"], _KIND_INDEX["attention"])


def class_multiplier(kind: np.ndarray, dw_factor: float | np.ndarray,
                     mm_factor: float | np.ndarray) -> np.ndarray:
    """Per-op FLOP cost multiplier of its op class (depthwise conv, matmul/attention, else 1);
    the factors may be scalars or one per op."""
    return np.where(kind == _KIND_INDEX["dwconv"], dw_factor, np.where(np.isin(kind, _MM_KINDS), mm_factor, 1.0))


def op_times_ms(ops: OpArrays, *, precision: str, peak_gops: float | np.ndarray, bandwidth_gbps: float,
                params: FamilyParams, op_bytes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Roofline time (ms) of every op on one unit, and whether each is compute-bound.

    Integer-only ops cost nothing. ``peak_gops`` is the unit's peak at each op's arithmetic
    precision (a scalar, or one per op from ``precision.plan``); ``op_bytes`` the bytes each op
    moves at its own precision (default: every op at ``precision``).
    """
    byts = ops.bytes_at(precision) if op_bytes is None else op_bytes
    mult = class_multiplier(ops.kind, params.dw_factor, params.mm_factor)
    t_c = ops.flops * mult / (np.asarray(peak_gops, dtype=float) * 1e9 * params.eff_compute)
    t_m = byts / (bandwidth_gbps * 1e9 * params.eff_memory)
    t = np.maximum(t_c, t_m) * 1e3 + np.where(ops.fused(), 0.0, params.overhead_us * 1e-3)
    t = np.where(ops.int_only, 0.0, t)
    return t, t_c >= t_m


def predict_ms(ops: OpArrays, *, unit: str, precision: str, peak_gops: float | np.ndarray, bandwidth_gbps: float,
               params: FamilyParams, cpu_peak_gops: float | None = None,
               cpu_params: FamilyParams | None = None,
               op_bytes: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Whole-model latency (ms) on ``unit`` (ops plus the fixed per-inference cost), with CPU
    fallback (at fp32) for ops the delegate does not take.

    ``peak_gops`` and ``op_bytes`` may be per op (``precision.plan``), so each op is priced at
    the precision it really runs at.

    Returns:
        (total ms, per-op ms, per-op compute-bound flags, per-op "ran on the unit" flags).
    """
    t, bound = op_times_ms(ops, precision=precision, peak_gops=peak_gops, bandwidth_gbps=bandwidth_gbps,
                           params=params, op_bytes=op_bytes)
    taken = ops.taken(unit)
    if not taken.all() and cpu_peak_gops and cpu_params is not None:
        t_cpu, b_cpu = op_times_ms(ops, precision="fp32", peak_gops=cpu_peak_gops, bandwidth_gbps=bandwidth_gbps,
                                   params=cpu_params)
        t = np.where(taken, t, t_cpu)
        bound = np.where(taken, bound, b_cpu)
        costed = taken | ops.int_only
        switches = int(np.count_nonzero(np.diff(costed[~ops.int_only].astype(int)) != 0)) if costed.size else 0
        extra = switches * TRANSITION_MS
    else:
        extra = 0.0
    return float(t.sum() + extra + params.fixed_ms), t, bound, taken


def intensity(flops: float, byts: float) -> float:
    """Arithmetic intensity (FLOP per byte); 0 when nothing moves."""
    return flops / byts if byts > 0 else math.inf if flops > 0 else 0.0
