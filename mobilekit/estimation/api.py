"""``estimate``: latency of a model on a phone, without the phone.

The model is exported once (``graph.analyze``), every op is priced at the precision it runs at
(``precision.py``) by the calibrated roofline of the target's compute unit (``model.py`` with the
efficiencies of ``fit.py``), and the total gets the band of its (platform, unit, precision)
group, claiming the coverage measured leave-one-model-out (``bands.py``). When the user has
calibrated the target on their own reports (``mobilekit calibrate``, ``device_calibration.py``),
that family's refitted params (and, given enough reports, their own band) replace the shipped
ones, through the same pricing (``_price``) the refit used.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mobilekit.errors import ConfigError, MobilekitWarning
from mobilekit.recipe import Recipe
from mobilekit.estimation.bands import MIN_ARCHS, MIN_ROWS, Band, band_for
from mobilekit.estimation.calibration_store import DeviceCalibration, FamilyCalibration, find_device_calibration
from mobilekit.estimation.devices import DeviceSpec, peak_key, spec_for
from mobilekit.estimation.graph import PRECISION_BYTES, GraphCost, analyze
from mobilekit.estimation.model import FamilyParams, OpArrays, family_key, intensity, predict_ms
from mobilekit.estimation.precision import artifact_overrides, needed_keys, op_float_precision, plan

logger = logging.getLogger(__name__)

UNITS = ("cpu", "gpu", "npu")
# bumped when estimates of the same model and recipe change (cached estimates are keyed by it):
# 2 = per-op precision, per-group leave-one-model-out bands; 3 = a mixed artifact priced layer by layer
# (its layers matched by weight size), not by the op-count majority of each kind; 4 = a matmul-FLOP factor
# per family, a factor per calibration phone x unit, leave-one-device-out bands for other phones
ESTIMATOR_REVISION = 4
# delegate named in a recipe -> compute unit it runs on
# export format -> runtime format of the calibration set (whose factor applies)
_FORMAT_OF = {"executorch": "executorch", "coreml": "coreml", "tflite": "tflite", "onnx": "onnx", "qnn": "qnn"}
_DELEGATE_UNIT = {"xnnpack": "cpu", "cpu": "cpu", "portable": "cpu", "gpu": "gpu", "vulkan": "gpu", "mps": "gpu",
                  "nnapi": "npu", "qnn": "npu", "coreml": "npu", "ane": "npu", "npu": "npu"}


@dataclass(frozen=True, kw_only=True)
class LatencyEstimate:
    """An estimated latency of one model on one target's compute unit.

    Attributes:
        target: profile name.
        model: model name.
        format: export format the estimate assumes (``executorch``, ``coreml``, ``tflite``, ``onnx``).
        precision: export precision (``fp32``, ``fp16``, ``int8-dynamic``, ...).
        compute_unit: ``cpu``, ``gpu`` or ``npu``.
        ms: estimated latency of one forward pass (ms).
        low_ms: low end of the band (ms).
        high_ms: high end of the band (ms).
        coverage: share of true latencies the band holds, as measured leave-one-model-out on the
            calibration rows of its group (0-1); see ``band_reason`` when the group had too few.
        per_layer: one dict per costed op: name, op, flops, bytes, ms, bound (``compute``/``memory``), unit,
            precision (what the op runs at: an int8-dynamic recipe leaves convolutions fp32).
        roofline: peak_gops, bandwidth_gbps, intensity (FLOP/byte), achieved_gops, ridge (FLOP/byte),
            efficiencies, per-op precision counts, where each spec number came from, and
            ``precision_from``: ``recipe table``, or what the artifact's per-op precisions were read
            from (``onnx graph``, ``tflite graph``, ``coreml graph``, ``export manifest``; counts in
            ``artifact_precisions``).
        source: always ``estimate`` (a LatencyReport's ``host``/``device`` counterpart).
        band_reason: why the band is wider than its group's own or its coverage unmeasured
            (too few or no calibration latencies); None when it comes from enough data.
        calibration: when the target's family was refitted on the user's own reports
            (``mobilekit calibrate``): device, family, reports, models, ``band`` (``own`` when the
            band comes from those reports' held-out residuals, else ``shipped``), store file and the
            shipped params; None when the shipped fit was used.
        notes: remarks, e.g. which calibration priced the estimate.
    """

    target: str
    model: str
    format: str | None
    precision: str
    compute_unit: str
    ms: float
    low_ms: float
    high_ms: float
    coverage: float
    per_layer: list[dict[str, Any]] = field(default_factory=list)
    roofline: dict[str, Any] = field(default_factory=dict)
    source: str = "estimate"
    band_reason: str | None = None
    calibration: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyEstimate:
        """Inverse of ``to_dict``.

        Raises:
            ConfigError: a required key is missing.
        """
        need = ("target", "model", "precision", "compute_unit", "ms", "low_ms", "high_ms", "coverage")
        missing = [k for k in need if k not in d]
        if missing:
            raise ConfigError(f"LatencyEstimate dict lacks {missing}", where="LatencyEstimate.from_dict")
        return cls(target=str(d["target"]), model=str(d["model"]), format=d.get("format"),
                   precision=str(d["precision"]), compute_unit=str(d["compute_unit"]), ms=float(d["ms"]),
                   low_ms=float(d["low_ms"]), high_ms=float(d["high_ms"]), coverage=float(d["coverage"]),
                   per_layer=list(d.get("per_layer", [])), roofline=dict(d.get("roofline", {})),
                   source=str(d.get("source", "estimate")), band_reason=d.get("band_reason"),
                   calibration=d.get("calibration"), notes=list(d.get("notes", [])))


def _default_recipe(target: Any) -> tuple[str | None, str | None, str | None]:
    recipe = getattr(target, "default_recipe", None)
    if not recipe:
        return None, None, None
    parsed = Recipe.parse(recipe)
    return parsed.format, parsed.delegate, parsed.precision


def _pick_unit(target: Any, fmt: str | None, delegate: str | None, precision: str) -> str:
    if delegate and delegate in _DELEGATE_UNIT:
        return _DELEGATE_UNIT[delegate]
    if fmt == "coreml":
        return "gpu" if precision == "fp32" else "npu"
    return "cpu"


def _recipe_of(t: Any, format: str | None, precision: str | None, compute_unit: str | None,
               delegate: str | None) -> tuple[str | None, str, str]:
    """(format, precision, compute unit) an estimate on ``t`` prices, defaults from its recipe filled in."""
    fmt_d, delegate_d, prec_d = _default_recipe(t)
    fmt = format or fmt_d
    prec = precision or prec_d or "fp32"
    if prec not in PRECISION_BYTES:
        raise ConfigError(f"unknown precision {prec!r}", where="precision",
                          fix=f"use one of {', '.join(sorted(PRECISION_BYTES))}")
    unit = compute_unit or _pick_unit(t, fmt, delegate or (delegate_d if fmt == fmt_d else None), prec)
    if unit not in UNITS:
        raise ConfigError(f"unknown compute unit {unit!r}", where="compute_unit", fix=f"use one of {', '.join(UNITS)}")
    if unit == "npu" and prec == "fp32":
        warnings.warn("NPUs do not run fp32; estimating the NPU at fp16", MobilekitWarning, stacklevel=3)
        prec = "fp16"
    return fmt, prec, unit


def _resolve_target(target: Any) -> tuple[str, Any]:
    if target is None:
        raise ConfigError("no target given", where="target", fix="pass target='pixel-8' (see `mobilekit targets`)")
    if isinstance(target, DeviceSpec) or hasattr(target, "device_spec"):
        return getattr(target, "name"), target
    if target == "host":  # this machine, measured now (``host.measure_host``)
        from mobilekit.estimation.host import measure_host

        return "host", measure_host()
    from mobilekit.targets import get_target
    t = get_target(target) if isinstance(target, str) else target
    return t.name, t


def estimate(model: Any, example_inputs: Sequence[Any], *, target: Any, format: str | None = None,
             precision: str | None = None, compute_unit: str | None = None, name: str | None = None,
             cost: GraphCost | None = None, delegate: str | None = None,
             artifact: str | Path | None = None,
             calibration: bool | str | Path | DeviceCalibration = True) -> LatencyEstimate:
    """Estimate the latency of ``model`` on ``target`` from its graph and the calibrated roofline.

    Every op is priced at the precision it runs at in the artifact the recipe builds
    (``precision.py``): ``int8-dynamic`` quantizes Linear/MatMul only, so convolutions are priced
    at fp32; when ``artifact`` is an exported file, what it actually quantized is read from it.

    Args:
        model: a ``torch.nn.Module`` (exportable with ``torch.export``).
        example_inputs: positional inputs of one forward pass.
        target: a profile name (``"pixel-8"``), a ``Target``, or a host profile from ``estimate.host``.
        format: export format; default: the one of the target's default recipe.
        precision: ``fp32``, ``fp16``, ``int8-weight``, ``int8-dynamic``, ``int8-static`` or ``w8a16``;
            default: the target's default recipe's.
        compute_unit: ``cpu``, ``gpu`` or ``npu``; default: where the format/delegate runs.
        name: model name for the result (default: the class name).
        cost: an already computed ``graph.analyze`` result (skips the export).
        delegate: the recipe's delegate (``xnnpack``, ``coreml``, ...), to pick the compute unit.
        artifact: path of the exported file, read for its per-op precision: an ``.onnx`` or
            ``.tflite`` graph, an ``.mlpackage``'s ML Program, or the export manifest's record of a ``.pte``.
        calibration: ``True``: use the target's calibration from your own reports when
            ``mobilekit calibrate`` stored one (default store); a directory: the store to read;
            ``False``: the shipped fit only; a ``DeviceCalibration``: that one.

    Returns:
        The estimate, with a band and per-op breakdown (``calibration`` and ``notes`` say when
        your own reports refitted it; ``notes`` also when a stored calibration was ignored as stale).

    Raises:
        ConfigError: unknown target, precision or compute unit, or a unit the target lacks.
        ExportError: the model cannot be exported.

    Example:
        >>> est = estimate(model, (x,), target="pixel-8", precision="int8-dynamic")
        >>> print(f"{est.ms:.1f} ms [{est.low_ms:.1f}, {est.high_ms:.1f}]")
    """
    tname, t = _resolve_target(target)
    fmt, prec, unit = _recipe_of(t, format, precision, compute_unit, delegate)
    device_cal, ignored = _device_calibration(calibration, tname)
    c = cost if cost is not None else analyze(model, example_inputs)
    est = _from_cost(c, t, tname, name or type(model).__name__, fmt, prec, unit, artifact, device_cal)
    return replace(est, notes=[*est.notes, ignored]) if ignored else est


def _device_calibration(calibration: bool | str | Path | DeviceCalibration,
                        tname: str) -> tuple[DeviceCalibration | None, str | None]:
    """The user's calibration an estimate uses, and why a stored one was ignored (a note for the estimate)."""
    if isinstance(calibration, DeviceCalibration):
        return calibration, None
    if calibration is False or calibration is None:
        return None, None
    return find_device_calibration(tname, None if calibration is True else Path(calibration))


@dataclass(frozen=True)
class _Priced:
    """One model priced on one target's unit, before any fitted params are applied: what both
    ``_from_cost`` (to predict) and ``device_calibration`` (to refit) need."""

    ops: OpArrays
    op_plan: Any                # precision.OpPlan: per-op precision, bytes, peak
    spec: DeviceSpec
    platform: str
    peak: float                 # the unit's peak at the recipe's precision (GOP/s)
    main_key: str
    params: FamilyParams        # the shipped fit's params for this family (efficiency 1 on a measured host)
    cpu_params: FamilyParams
    factor: float               # the shipped format factor x the phone's device factor (1 off the calibration set)
    art_counts: dict[str, dict[str, int]] | None
    precision_from: str = "recipe table"  # else the artifact reader's source (precision.artifact_overrides)


def _price(cost: GraphCost, t: Any, tname: str, fmt: str | None, prec: str, unit: str,
           artifact: str | Path | None = None) -> _Priced:
    from mobilekit.estimation.fit import device_unit_key, fitted_params, params_for

    ops = OpArrays.from_rows([o.to_row() for o in cost.ops])
    overrides, art_counts, precision_from = artifact_overrides(artifact, fmt, op_float_precision(prec, unit, fmt))
    main_key = f"{unit}.{peak_key(prec, unit)}"
    keys = tuple(dict.fromkeys((main_key, *needed_keys(ops, fmt=fmt, unit=unit, precision=prec,
                                                        overrides=overrides), "cpu.fp32")))
    if hasattr(t, "device_spec"):
        spec, platform = t.device_spec(), t.platform
    else:
        kinds = {u.kind for u in getattr(t, "compute_units", ())}
        if kinds and unit not in kinds:
            raise ConfigError(f"target {tname} has no {unit} compute unit", where="compute_unit",
                              fix=f"use one of {', '.join(sorted(kinds))}")
        platform = t.platform
        spec = spec_for(t, keys)
    try:
        op_plan = plan(ops, fmt=fmt, unit=unit, precision=prec, peaks=spec.peaks, overrides=overrides)
    except KeyError as exc:
        op_plan, missing = None, str(exc.args[0])
    if op_plan is None or spec.bandwidth_gbps is None:
        key = missing if op_plan is None else main_key
        raise ConfigError(f"no peak throughput known for {key} on {tname}", where=f"profiles/{tname}.toml",
                          fix="add peak_gops for this unit and precision to the profile, or pick another unit")
    peak = spec.peaks.get(main_key) or float(op_plan.peak.max(initial=0.0))
    cal = fitted_params()
    params = params_for(cal, platform, unit, prec)
    if getattr(t, "measured", False):
        # a measured peak and bandwidth are already achieved rates: efficiency 1 against them
        params = replace(params, eff_compute=1.0, eff_memory=1.0)
    factor = cal.format_factor.get(_FORMAT_OF.get(fmt or "", fmt or ""), 1.0)
    # a phone of the calibration set carries its own fitted factor (1 for every other phone)
    factor *= cal.device_factor.get(device_unit_key(tname, unit), 1.0)
    return _Priced(ops=ops, op_plan=op_plan, spec=spec, platform=platform, peak=peak, main_key=main_key,
                   params=params, cpu_params=params_for(cal, platform, "cpu", "fp32"), factor=factor,
                   art_counts=art_counts, precision_from=precision_from)


def _user_band(fam: FamilyCalibration, shipped: Band) -> Band:
    """The band of the user's own held-out residuals when the calibration built one, else the shipped one."""
    if not fam.band:
        return shipped
    b = fam.band
    return Band(low_factor=float(np.exp(b["log_low"])), high_factor=float(np.exp(b["log_high"])),
                coverage=float(b["coverage"]), n=int(b["n"]), key=f"your reports: {fam.family}", measured=True)


def _calibration_note(tname: str, fam: FamilyCalibration, device_cal: DeviceCalibration) -> str:
    band = ("band from your reports' leave-one-model-out residuals" if fam.band else
            f"shipped band (a band of your own needs >= {MIN_ROWS} reports from >= {MIN_ARCHS} models)")
    where = f" ({device_cal.path})" if device_cal.path else ""
    return (f"calibrated on {fam.n} of your {tname} report(s) of {len(fam.models)} model(s), {fam.family}{where}; "
            f"{band}")


def _from_cost(cost: GraphCost, t: Any, tname: str, model_name: str, fmt: str | None, prec: str,
               unit: str, artifact: str | Path | None = None,
               device_cal: DeviceCalibration | None = None) -> LatencyEstimate:
    p = _price(cost, t, tname, fmt, prec, unit, artifact)
    ops, op_plan, spec, platform, factor, params = p.ops, p.op_plan, p.spec, p.platform, p.factor, p.params
    from mobilekit.estimation.fit import device_unit_key, fitted_params

    # a phone outside the calibration set gets the band measured leave-one-device-out
    band = band_for(platform, unit, prec, seen_device=device_unit_key(tname, unit) in fitted_params().device_factor)
    fam = device_cal.lookup(unit, prec) if device_cal is not None else None
    calibration: dict[str, Any] | None = None
    notes: list[str] = []
    if artifact is not None and p.art_counts is None:
        notes.append(f"per-op precision from the recipe table: {Path(artifact).name} shows none "
                     "(only .onnx, .tflite, an .mlpackage's ML Program and a .pte listed in its export's "
                     "manifest.json do)")
    if fam is not None and device_cal is not None:  # the user's own reports refitted this family on this device
        params, band = fam.params, _user_band(fam, band)
        notes.append(_calibration_note(tname, fam, device_cal))
        calibration = {"device": device_cal.device, "family": fam.family, "reports": fam.n,
                       "models": list(fam.models), "band": "own" if fam.band else "shipped",
                       "store": str(device_cal.path) if device_cal.path else None,
                       "shipped_params": fam.shipped.to_dict()}
    total, per_op, bound, taken = predict_ms(ops, unit=unit, precision=prec, peak_gops=op_plan.peak,
                                             bandwidth_gbps=spec.bandwidth_gbps, params=params,
                                             cpu_peak_gops=spec.peaks.get("cpu.fp32"), cpu_params=p.cpu_params,
                                             op_bytes=op_plan.byts)
    total, per_op = total * factor, per_op * factor
    peak, art_counts, main_key, precision_from = p.peak, p.art_counts, p.main_key, p.precision_from
    # ops handed to the CPU run there at fp32
    byts = np.where(taken, op_plan.byts, ops.bytes_at("fp32"))
    op_prec = np.where(taken, op_plan.precision, "fp32")
    per_layer = [{"name": o.name, "op": o.op, "flops": o.flops, "bytes": float(b), "ms": float(ms),
                  "bound": "compute" if bd else "memory", "unit": unit if tk else "cpu", "precision": str(p)}
                 for o, b, ms, bd, tk, p in zip(cost.ops, byts, per_op, bound, taken, op_prec)]
    flops = cost.flops
    total_bytes = float(byts.sum())
    counts = Counter(str(p) for p, free in zip(op_prec, ops.int_only) if not free)
    flops_by = Counter()
    for p, f in zip(op_prec, ops.flops):
        flops_by[str(p)] += float(f)
    roofline = {"peak_gops": peak, "bandwidth_gbps": spec.bandwidth_gbps, "intensity": intensity(flops, total_bytes),
                "achieved_gops": flops / (total * 1e6) if total > 0 else 0.0, "ridge": peak / spec.bandwidth_gbps,
                "flops": flops, "bytes": total_bytes, "family": family_key(platform, unit, prec),
                "params": params.to_dict(), "format_factor": factor, "fixed_ms": params.fixed_ms * factor,
                "band_from": band.key, "band_n": band.n,
                "op_precisions": dict(sorted(counts.items())),
                "flops_by_precision": dict(sorted(flops_by.items())),
                "precision_from": precision_from,
                **({"artifact_precisions": art_counts} if art_counts is not None else {}),
                "peaks_used": {k: spec.peaks[k] for k in sorted(set(op_plan.keys.tolist()))},
                "spec_sources": {"peak": spec.sources.get(main_key, "profile"), "bandwidth": spec.sources.get("bw", "profile")},
                "ops_on_cpu": int((~taken).sum()),
                "params_from": "your calibration" if calibration else "shipped fit"}
    return LatencyEstimate(target=tname, model=model_name, format=fmt, precision=prec, compute_unit=unit,
                           ms=total, low_ms=total * band.low_factor, high_ms=total * band.high_factor,
                           coverage=band.coverage, per_layer=per_layer, roofline=roofline,
                           band_reason=band.reason, calibration=calibration, notes=notes)


def estimate_all(model: Any, example_inputs: Sequence[Any], *, precision: str | None = None,
                 compute_unit: str | None = None, name: str | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None,
                 calibration: bool | str | Path = True) -> list[LatencyEstimate]:
    """Estimate ``model`` on every shipped profile (the model is exported once).

    Targets that lack the requested unit or a peak for it are left out (logged at INFO). Each
    target uses its stored calibration as ``estimate`` does (``calibration``).

    Example:
        >>> for e in estimate_all(model, (x,), precision="fp16"):
        ...     print(e.target, e.compute_unit, round(e.ms, 2))
    """
    from mobilekit.targets import list_targets

    cost = analyze(model, example_inputs)
    out: list[LatencyEstimate] = []
    targets = list_targets()
    for i, t in enumerate(targets):
        if on_progress:
            on_progress(t.name, i, len(targets))
        try:
            out.append(estimate(model, example_inputs, target=t, precision=precision, compute_unit=compute_unit,
                                name=name or type(model).__name__, cost=cost, calibration=calibration))
        except ConfigError as exc:
            logger.info("skipping %s: %s", t.name, exc)
    return out
