"""``calibrate``: refit a device's roofline on the user's own measured LatencyReports.

The shipped fit (``fit.py``) comes from published latencies of other models on other
people's phones. A user who has profiled a few of their own artifacts on their own phone (or
on this host) knows more about that device; ``calibrate`` turns those reports into a
per-device calibration that later estimates use (``calibration_store``):

1. every report is read and checked before any work: it must be a measurement (``host`` or
   ``device``, not ``estimate``), of a device mobilekit knows, with a format and precision,
   and name a model mobilekit can rebuild (a SPEC, a builtin or zoo name, or ``models=``);
2. each report's model is costed (``graph.analyze``) and priced on the device exactly as
   ``estimate()`` prices it (``api._price``: same per-op precision, peaks, format factor);
3. per (compute unit, precision) family, the five roofline params are refitted by the same
   least squares the shipped fit uses (``calibrate._fit_one``), pulled toward the shipped
   params with the weight of ``PSEUDO_REPORTS`` reports, so one report moves an estimate only
   part of the way and many reports move it further; and bounded to physical values: no
   efficiency above the peak (or above what the shipped fit already found), depthwise FLOPs
   no cheaper than dense ones, and no fixed or per-op cost larger than the fastest measured
   inference;
4. each model is also predicted by a refit on the *other* models only (held out), which is
   the honest "after" error; with at least ``bands.MIN_ROWS`` reports from ``bands.MIN_ARCHS``
   models those held-out residuals make the family's band (``bands.measured_group``), else the
   shipped band is kept.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mobilekit.errors import ConfigError
from mobilekit.estimation.calibration_store import (DeviceCalibration, FamilyCalibration, store_path,
                                                    write_device_calibration)
from mobilekit.estimation.model import FamilyParams
from mobilekit.profiling.report import LatencyReport

if TYPE_CHECKING:
    from mobilekit.estimation.host import HostTarget

logger = logging.getLogger(__name__)

# Weight of the shipped fit, counted in reports: with one report the refit moves an estimate
# roughly a third to a half of the way to the measurement, with ten most of the way.
PSEUDO_REPORTS = 1.0
_FORMATS = ("executorch", "tflite", "onnx", "coreml")
_SPEC_RE = re.compile(r"^(builtin:|zoo:)|^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, kw_only=True)
class CalibratedReport:
    """One report's measured latency against the estimate before and after calibration.

    Attributes:
        label: the report file (or ``report[i]``) it came from.
        artifact: the measured artifact.
        model: the model name it was priced as.
        family: ``"<unit>/<precision>"``.
        measured_ms: the report's p50 (ms).
        before_ms: the shipped estimate (ms).
        after_ms: the estimate with the new calibration, fitted on every report including this one (ms).
        held_out_ms: the estimate with a calibration fitted on the family's *other* models only (ms);
            None when the family has one model.
    """

    label: str
    artifact: str
    model: str
    family: str
    measured_ms: float
    before_ms: float
    after_ms: float
    held_out_ms: float | None

    @staticmethod
    def _err(est: float | None, measured: float) -> float | None:
        return None if est is None else (est - measured) / measured

    @property
    def error_before(self) -> float:
        """(before - measured) / measured."""
        return (self.before_ms - self.measured_ms) / self.measured_ms

    @property
    def error_after(self) -> float:
        """(after - measured) / measured."""
        return (self.after_ms - self.measured_ms) / self.measured_ms

    @property
    def error_held_out(self) -> float | None:
        """(held out - measured) / measured, None without a held-out estimate."""
        return self._err(self.held_out_ms, self.measured_ms)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (with the errors)."""
        return {"label": self.label, "artifact": self.artifact, "model": self.model, "family": self.family,
                "measured_ms": self.measured_ms, "before_ms": self.before_ms, "after_ms": self.after_ms,
                "held_out_ms": self.held_out_ms, "error_before": self.error_before,
                "error_after": self.error_after, "error_held_out": self.error_held_out}


def _median_abs(xs: Sequence[float | None]) -> float | None:
    vals = [abs(x) for x in xs if x is not None]
    return float(np.median(vals)) if vals else None


@dataclass(frozen=True, kw_only=True)
class CalibrationResult:
    """What ``calibrate`` fitted, how it changed the estimates, and where it was stored.

    Attributes:
        device: the calibrated device (profile name or ``host``).
        rows: one ``CalibratedReport`` per report.
        calibration: the per-device calibration (stored unless ``dry_run``).
        path: its file in the store (where it was written, or would be with ``dry_run``).
        written: True when it was written.
        replaced: True when it replaced an earlier calibration of the device.
    """

    device: str
    rows: tuple[CalibratedReport, ...]
    calibration: DeviceCalibration
    path: Path
    written: bool
    replaced: bool = False

    @property
    def median_error_before(self) -> float:
        """Median |error| of the shipped estimates (0-1)."""
        return _median_abs([r.error_before for r in self.rows]) or 0.0

    @property
    def median_error_after(self) -> float:
        """Median |error| after calibration, in sample (fitted on these same reports; 0-1)."""
        return _median_abs([r.error_after for r in self.rows]) or 0.0

    @property
    def median_error_held_out(self) -> float | None:
        """Median |error| of the held-out estimates (0-1); None when no family had two models."""
        return _median_abs([r.error_held_out for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``mobilekit calibrate --json``)."""
        return {"device": self.device, "path": str(self.path), "written": self.written, "replaced": self.replaced,
                "median_error_before": self.median_error_before, "median_error_after": self.median_error_after,
                "median_error_held_out": self.median_error_held_out, "rows": [r.to_dict() for r in self.rows],
                "calibration": self.calibration.to_dict()}


# ------------------------------------------------------------------------------------------ reading reports

@dataclass(frozen=True)
class _Input:
    label: str
    report: LatencyReport
    path: Path | None


_FIX_REPORT = "pass the JSON that `mobilekit profile --json` or LatencyReport.write() writes"
_REQUIRED = ("artifact", "format", "runtime", "source", "device", "p50_ms")


def _report_from(data: Any, label: str) -> LatencyReport:
    if not isinstance(data, dict):
        raise ConfigError(f"{label} is not a LatencyReport (a JSON {type(data).__name__})", where=label,
                          fix=_FIX_REPORT)
    if "artifacts" in data and "p50_ms" not in data:
        raise ConfigError(f"{label} is a manifest, not a LatencyReport", where=label,
                          fix="profile it first: `mobilekit profile MANIFEST --json reports.json`")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{label} is not a LatencyReport: no {', '.join(missing)}", where=f"{label}:{missing[0]}",
                          fix=_FIX_REPORT)
    try:
        return LatencyReport.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc.message}", where=f"{label}:{exc.where}", fix=exc.fix) from exc
    except TypeError as exc:
        raise ConfigError(f"{label} is not a LatencyReport: {exc}", where=label, fix=_FIX_REPORT) from exc


def read_reports(sources: Sequence[str | Path | LatencyReport]) -> list[_Input]:
    """Every report in ``sources``: report files, ``mobilekit profile --json`` files (many reports) or
    LatencyReport objects.

    Raises:
        ConfigError: a file cannot be read or holds something else, naming the file and field.
    """
    out: list[_Input] = []
    for i, src in enumerate(sources):
        if isinstance(src, LatencyReport):
            out.append(_Input(f"report[{i}]", src, None))
            continue
        path = Path(src)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the latency report: {exc}", where=str(path),
                              fix=_FIX_REPORT) from exc
        # `mobilekit profile --json` writes {schema_version, reports: [...]}
        many = data.get("reports") if isinstance(data, dict) and "p50_ms" not in data else None
        if isinstance(many, list):
            out += [_Input(f"{path}#{k}", _report_from(d, f"{path}#reports/{k}"), path) for k, d in enumerate(many)]
        else:
            out.append(_Input(str(path), _report_from(data, str(path)), path))
    if not out:
        raise ConfigError("no latency reports given", where="REPORTS",
                          fix="pass the JSON files `mobilekit profile --json` wrote")
    return out


# ------------------------------------------------------------------------------------------ what each report is

@dataclass(frozen=True)
class _Job:
    inp: _Input
    device: str
    model: str
    spec: Any          # a SPEC string, (module, example inputs) or a GraphCost
    format: str
    precision: str
    delegate: str | None
    artifact: Path | None


def _artifact_path(inp: _Input) -> Path:
    p = Path(inp.report.artifact)
    if not p.is_absolute() and inp.path is not None and not p.exists():
        p = inp.path.parent / p
    return p


def _manifest_entry(artifact: Path) -> tuple[str | None, Any]:
    """(model name, Artifact) from the ``manifest.json`` beside ``artifact`` when it lists it."""
    from mobilekit.artifact import manifest_entry

    manifest, art = manifest_entry(artifact)
    return (manifest.model if manifest is not None else None), art


def _device_of(inp: _Input, device: str | None) -> str:
    from mobilekit.targets import get_target

    if device is not None:
        return "host" if device == "host" else get_target(device).name
    r = inp.report
    if r.source == "host":
        return "host"
    for key, name in (("target", r.target), ("device.name", r.device.get("name"))):
        if name:
            try:
                return get_target(str(name)).name
            except ConfigError:
                continue
    raise ConfigError(f"{inp.label}: the phone {r.device.get('name')!r} is no known profile", where=f"{inp.label}:device",
                      fix="pass --device NAME (see `mobilekit targets`) if it is one of them")


def _spec_for(name: str | None, inp: _Input, artifact: Path, models: Mapping[str, Any] | str | None) -> Any:
    if isinstance(models, str):
        return models
    if models:
        for key in (name, artifact.name, artifact.stem):
            if key is not None and key in models:
                return models[key]
    if name:
        if _SPEC_RE.match(name) or Path(name).is_dir():
            return name
        from mobilekit.builtins import BUILTINS
        from mobilekit.zoo import ZOO

        if name in BUILTINS:
            return f"builtin:{name}"
        if name in ZOO:
            return f"zoo:{name}"
    what = f"model {name!r} is no SPEC, builtin or zoo name" if name else "names no model"
    raise ConfigError(f"{inp.label}: the report {what}, so its artifact cannot be priced", where=f"{inp.label}:model",
                      fix="pass --model NAME=SPEC (e.g. --model convnet.onnx=pkg.module:function) or profile "
                          "the export's manifest.json, which records the model")


def _job(inp: _Input, device: str | None, models: Mapping[str, Any] | str | None, precision: str | None) -> _Job:
    from mobilekit.estimation.graph import PRECISION_BYTES

    r = inp.report
    if r.source == "estimate":
        raise ConfigError(f"{inp.label} is an estimate, not a measurement", where=f"{inp.label}:source",
                          fix="calibrate on reports measured with `mobilekit profile` (host or --device)")
    if not r.p50_ms > 0:
        raise ConfigError(f"{inp.label}: p50_ms is {r.p50_ms}, not a latency", where=f"{inp.label}:p50_ms",
                          fix="leave out reports whose measurement failed, or profile the artifact again")
    artifact = _artifact_path(inp)
    name, art = _manifest_entry(artifact)
    fmt = r.format or (art.format if art is not None else None)
    if fmt not in _FORMATS:
        raise ConfigError(f"{inp.label}: format {fmt!r} cannot be priced", where=f"{inp.label}:format",
                          fix=f"reports of {', '.join(_FORMATS)} artifacts only")
    prec = r.precision or (art.precision if art is not None else None) or precision
    if prec is None:
        raise ConfigError(f"{inp.label}: the report records no precision", where=f"{inp.label}:precision",
                          fix="pass --precision (e.g. fp32), or profile the export's manifest.json, which records it")
    if prec not in PRECISION_BYTES:
        raise ConfigError(f"{inp.label}: unknown precision {prec!r}", where=f"{inp.label}:precision",
                          fix=f"use one of {', '.join(sorted(PRECISION_BYTES))}")
    model = r.model or name
    spec = _spec_for(model, inp, artifact, models)
    return _Job(inp=inp, device=_device_of(inp, device), model=str(model or artifact.stem), spec=spec, format=fmt,
                precision=prec, delegate=art.delegate if art is not None else None,
                artifact=artifact if artifact.exists() else None)  # an .mlpackage is a folder


def _one_device(devices: set[str]) -> str:
    if len(devices) > 1:
        raise ConfigError(f"the reports are from {len(devices)} devices ({', '.join(sorted(devices))})",
                          where="REPORTS",
                          fix="calibrate one device at a time, or pass --device NAME if they are all one phone")
    return devices.pop()


def device_of_reports(sources: Sequence[str | Path | LatencyReport], device: str | None = None) -> str:
    """The one device the reports were measured on (``host`` or a profile name).

    Raises:
        ConfigError: unreadable reports, an unknown device, or reports of several devices.
    """
    return _one_device({_device_of(inp, device) for inp in read_reports(sources)})


# ------------------------------------------------------------------------------------------ fitting

def _theta(p: FamilyParams) -> np.ndarray:
    """Log params in ``fit._fit_one``'s order (``fit.log_params``)."""
    from mobilekit.estimation.fit import log_params

    return log_params(p)


def _bounds(shipped: FamilyParams, priced: list[Any], measured: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Log bounds of the refit: what is physically possible on this device."""
    fastest = min(m / p.factor for m, p in zip(measured, priced))  # ms before the format factor
    per_op = min(m / p.factor / max(int((~p.ops.fused() & ~p.ops.int_only).sum()), 1)
                 for m, p in zip(measured, priced))
    t0 = _theta(shipped)
    # No unit beats its peak or its bandwidth; a shipped fit above 1 against a paper spec found the spec
    # low, so that much stays allowed. A depthwise FLOP is no cheaper than a dense one. No fixed cost can
    # exceed the fastest whole inference measured, nor a per-op cost that inference's share per op, even
    # when the shipped fit (made on other phones) says more.
    # A matmul FLOP may cost from a quarter to 4x what the shipped fit says.
    lo = np.minimum(np.log([1e-3, 1e-3, 1e-3, 1e-5, 1.0, 0.25 * shipped.mm_factor]), t0)
    hi = np.log([max(1.0, shipped.eff_compute), max(1.0, shipped.eff_memory), per_op * 1e3, fastest,
                 4.0 * shipped.dw_factor, 4.0 * shipped.mm_factor])
    lo = np.minimum(lo, hi - 1e-6)
    return lo, np.maximum(hi, lo + 1e-6)


def _refit(priced: list[Any], measured: list[float], shipped: FamilyParams, key: str) -> FamilyParams:
    from mobilekit.estimation.fit import _fit_one, _params, prepare_priced

    prep = prepare_priced([(p.ops, p.op_plan.byts, p.op_plan.peak, float(p.spec.bandwidth_gbps)) for p in priced],
                          measured)
    offset = np.log([p.factor for p in priced])
    theta = _fit_one(prep, np.arange(len(priced)), _theta(shipped), PSEUDO_REPORTS, offset,
                     bounds=_bounds(shipped, priced, measured))
    return _params(theta, len(priced), key)


@dataclass
class _Item:
    """One report on its way through the fit: its job, costed model, target and pricing."""

    job: _Job
    cost: Any
    target: Any
    unit: str
    precision: str
    priced: Any  # api._Priced
    family: str = ""
    before: float = 0.0


def calibrate(reports: Sequence[str | Path | LatencyReport], device: str | HostTarget | None = None,
              store: str | Path | None = None, *, models: Mapping[str, Any] | str | None = None,
              precision: str | None = None, dry_run: bool = False,
              on_progress: Callable[[str, int, int], None] | None = None) -> CalibrationResult:
    """Refit a device's estimator on your own measured LatencyReports and store it for later estimates.

    Args:
        reports: report files (``LatencyReport.write`` or ``mobilekit profile --json``) or LatencyReports,
            all measured on one device (``host`` reports: this machine).
        device: the device they were measured on (a profile name or ``host``); default: from the reports.
            A ``HostTarget`` (``measure_host()``) means ``host`` priced with those measured rates
            (default for ``host``: measured now, at each report's thread count).
        store: the calibration store directory (default: ``$MOBILEKIT_CALIBRATION_DIR``, else
            ``calibration/`` under the user cache dir).
        models: how to rebuild each report's model for pricing, when the report's ``model`` is no SPEC,
            builtin or zoo name: ``{model name or artifact file name: SPEC, (module, example inputs) or
            a ``graph.analyze`` result}``, or one SPEC for every report.
        precision: precision of reports that record none (a plain artifact path was profiled).
        dry_run: fit and compare, but write nothing.
        on_progress: optional ``(stage, done, total)`` callback.

    Returns:
        The fit, with each report's measured, before, after and held-out ms.

    Raises:
        ConfigError: a report is unreadable, foreign, an estimate, of an unknown device, or cannot be
            priced (the message names the file and the field); reports of several devices.

    Example:
        >>> res = calibrate(["r1.json", "r2.json"], device="pixel-8")  # doctest: +SKIP
        >>> f"{res.median_error_before:.0%} -> {res.median_error_held_out:.0%}"  # doctest: +SKIP
    """
    from mobilekit.estimation.api import ESTIMATOR_REVISION, _price, _recipe_of, _resolve_target, estimate

    if device is None or isinstance(device, str):
        host_target, name = None, device
    else:
        host_target, name = device, "host"
    inputs = read_reports(reports)
    jobs = [_job(inp, name, models, precision) for inp in inputs]
    dev = _one_device({j.device for j in jobs})
    total = len(jobs) + 1
    costs: dict[str, Any] = {}
    hosts: dict[int | None, Any] = {}  # measured once per thread count
    items: list[_Item] = []
    for i, job in enumerate(jobs):
        if on_progress:
            on_progress(f"pricing {job.model}", i, total)
        cost = _cost_of(job, costs)
        if dev == "host":
            from mobilekit.estimation.host import measure_host

            threads = job.inp.report.threads
            t = host_target or hosts.get(threads) or hosts.setdefault(threads, measure_host(threads))
        else:
            t = _resolve_target(dev)[1]
        try:
            fmt, prec, unit = _recipe_of(t, job.format, job.precision, None, job.delegate)
            priced = _price(cost, t, dev, fmt, prec, unit, job.artifact)
        except ConfigError as exc:
            raise ConfigError(f"{job.inp.label}: cannot price it on {dev}: {exc.message}", where=job.inp.label,
                              fix=exc.fix) from exc
        item = _Item(job=job, cost=cost, target=t, unit=unit, precision=prec, priced=priced,
                     family=f"{unit}/{prec}")
        item.before = _estimate(estimate, item, False).ms
        items.append(item)
    if on_progress:
        on_progress("fitting", len(jobs), total)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def device_cal(families: dict[str, FamilyCalibration]) -> DeviceCalibration:
        return DeviceCalibration(device=dev, families=families, estimator_revision=ESTIMATOR_REVISION,
                                 created=created, path=store_path(dev, store))

    fams: dict[str, FamilyCalibration] = {}
    held: dict[int, float] = {}
    for fam in sorted({it.family for it in items}):
        members = [k for k, it in enumerate(items) if it.family == fam]
        fams[fam], fam_held = _fit_family(fam, [items[k] for k in members], dev, estimate, device_cal)
        held.update({members[k]: v for k, v in fam_held.items()})
    cal = device_cal(fams)
    rows = []
    for k, it in enumerate(items):
        after = _estimate(estimate, it, cal).ms
        rows.append(CalibratedReport(label=it.job.inp.label, artifact=it.job.inp.report.artifact, model=it.job.model,
                                     family=it.family, measured_ms=it.job.inp.report.p50_ms, before_ms=it.before,
                                     after_ms=after, held_out_ms=held.get(k)))
    cal = DeviceCalibration(device=dev, families=fams, estimator_revision=ESTIMATOR_REVISION, created=created,
                            path=cal.path, reports=tuple(r.to_dict() for r in rows))
    path = store_path(dev, store)
    replaced = path.is_file()
    if not dry_run:
        write_device_calibration(cal, store)
    if on_progress:
        on_progress("done", total, total)
    return CalibrationResult(device=dev, rows=tuple(rows), calibration=cal, path=path, written=not dry_run,
                             replaced=replaced)


def _cost_of(job: _Job, costs: dict[str, Any]) -> Any:
    """The model's GraphCost (one export per distinct model)."""
    from mobilekit.estimation.graph import analyze

    from mobilekit.estimation.graph import GraphCost

    if isinstance(job.spec, GraphCost):  # already costed by the caller (as estimate(cost=...))
        return job.spec
    key = job.spec if isinstance(job.spec, str) else f"{job.model}#{id(job.spec)}"
    if key not in costs:
        if isinstance(job.spec, str):
            from mobilekit.spec import load_spec

            try:
                loaded = load_spec(job.spec)
            except ConfigError as exc:
                raise ConfigError(f"{job.inp.label}: cannot rebuild model {job.model!r}: {exc.message}",
                                  where=f"{job.inp.label}:model", fix=(f"{exc.fix}; or " if exc.fix else "") + "pass --model NAME=SPEC") from exc
            model, example = loaded.model, loaded.example_inputs
        else:
            model, example = job.spec
        costs[key] = analyze(model, tuple(example))
    return costs[key]


def _estimate(estimate: Any, it: _Item, calibration: Any) -> Any:
    """The one predictor (``estimate``) on a report's model and recipe, with the given calibration."""
    return estimate(None, (), target=it.target, format=it.job.format, precision=it.precision,
                    compute_unit=it.unit, name=it.job.model, cost=it.cost, artifact=it.job.artifact,
                    calibration=calibration)


def _fit_family(fam: str, members: list[_Item], dev: str, estimate: Any,
                device_cal: Callable[[dict[str, FamilyCalibration]], DeviceCalibration]
                ) -> tuple[FamilyCalibration, dict[int, float]]:
    """Refit one family on all its reports, and on each model's complement for held-out estimates."""
    from mobilekit.estimation.bands import MIN_ARCHS, MIN_ROWS, measured_group

    shipped = members[0].priced.params
    measured = [m.job.inp.report.p50_ms for m in members]
    names = [m.job.model for m in members]
    key = f"{dev}/{fam}"
    params = _refit([m.priced for m in members], measured, shipped, key)
    held: dict[int, float] = {}
    if len(set(names)) >= 2:
        for name in sorted(set(names)):
            rest = [k for k, n in enumerate(names) if n != name]
            p = _refit([members[k].priced for k in rest], [measured[k] for k in rest], shipped, key)
            fold = device_cal({fam: FamilyCalibration(family=fam, params=p, shipped=shipped, n=len(rest),
                                                      models=tuple(sorted({names[k] for k in rest})))})
            for k, n in enumerate(names):
                if n == name:
                    held[k] = _estimate(estimate, members[k], fold).ms
    band = None
    if len(members) >= MIN_ROWS and len(set(names)) >= MIN_ARCHS:
        res = np.log(np.array(measured) / np.array([held[k] for k in range(len(members))]))
        entry = measured_group(res, names)
        band = {k: entry[k] for k in ("log_low", "log_high", "coverage", "n", "archs", "widen")}
    return FamilyCalibration(family=fam, params=params, shipped=shipped, n=len(members),
                             models=tuple(sorted(set(names))), band=band), held


def format_error(x: float | None) -> str:
    """A signed relative error as a percentage (``+12%``), ``-`` for None."""
    return "-" if x is None or not math.isfinite(x) else f"{x:+.0%}"
