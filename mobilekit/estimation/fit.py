"""Fit the roofline's efficiencies on the published calibration latencies.

The only latency data fitted is ``device_latency_calibration.csv`` (224 published on-device
latencies). ``build_features`` turns it into the shipped ``calibration_features.json``: every
row normalised (device, compute unit, precision) and, per architecture, the costed ops of one
forward pass (``archs.py`` builds each architecture on the ``meta`` device and ``graph.py``
costs it), so estimating never re-traces a calibration model.

Every op of a row is priced at the precision it runs at in that row's runtime
(``precision.plan``, the function ``estimate()`` uses too): a CPU ``int8-static`` ExecuTorch
model keeps its norms in fp32, a QNN one does not.

``fit`` fits, per family (platform, unit, precision), the compute efficiency, memory
efficiency, per-op and per-inference costs and the depthwise and matmul factors of ``model.py``
by least squares on log latency, shrunk toward the unit-wide fit (and that toward a loose prior)
so a family with three rows stays sane; then a factor per runtime format and one per
calibration phone × unit. ``leave_one_model_out`` refits without each architecture in turn and
predicts it; ``leave_one_device_out`` does the same per phone.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilekit.errors import ConfigError
from mobilekit.estimation.devices import spec_for
from mobilekit.estimation.graph import KINDS
from mobilekit.estimation.model import FamilyParams, OpArrays, family_key
from mobilekit.estimation.precision import float_precision, needed_keys, plan

logger = logging.getLogger(__name__)

FEATURES_PATH = Path(__file__).with_name("calibration_features.json")
# The published latencies the estimator is fitted on (a copy of shared/data, shipped with the package).
CALIBRATION_CSV = Path(__file__).parent / "data" / "device_latency_calibration.csv"
FEATURES_VERSION = 1
# Loose prior every fit is shrunk toward: log of eff_compute, eff_memory, overhead (µs/op),
# fixed cost (ms/inference), depthwise factor, matmul factor.
_PRIOR = np.array([math.log(0.3), math.log(0.5), math.log(20.0), math.log(0.1), math.log(3.0), 0.0])
N_PARAMS = len(_PRIOR)
_LAMBDA_UNIT = 0.05      # weight of the prior on a unit-wide fit
_LAMBDA_FAMILY = 0.05    # weight of the unit-wide fit on a family fit
_FORMAT_SHRINK = 5.0     # pseudo-rows pulling a format's log factor toward 0
_DEVICE_SHRINK = 5.0     # pseudo-rows pulling a device x unit log factor toward 0 (1 row moves it 1/6 of the way)

_ARCH_RULES: list[tuple[str, str | None]] = [
    (r"^FastViT-T8", "fastvit-t8@256"), (r"^FastViT-T12", "fastvit-t12@256"), (r"^FastViT-SA36", "fastvit-sa36@256"),
    (r"^MobileOne-S0", "mobileone-s0@224"), (r"^MobileOne-S2", "mobileone-s2@224"), (r"^MobileOne-S3", "mobileone-s3@224"),
    (r"^DETR-ResNet50", "detr-resnet50-seg@448"), (r"^EfficientFormerV2-S0", "efficientformerv2-s0@224"),
    (r"^EfficientFormerV2-S1", "efficientformerv2-s1@224"), (r"^MobileNetV2 x1.4", "mobilenetv2-1.4@224"),
    (r"^RepViT-M0.9", "repvit-m0.9@224"), (r"^RepViT-M1.0", "repvit-m1.0@224"), (r"^RepViT-M1.1", "repvit-m1.1@224"),
    (r"^SwiftFormer-XS", "swiftformer-xs@224"), (r"^MobileCLIP-S3/L-14/S4", "clip-text-base"),
    (r"^MobileCLIP-L/14", "vit-l14@224"), (r"^MobileCLIP-S3$", None),
    (r"^MobileNetV3-Small", "mobilenetv3-small@224"), (r"^MobileNetV3-Large minimalistic", "mobilenetv3-large-min@224"),
    (r"^Inception-v4", "inception-v4@299"), (r"^SqueezeNet", "squeezenet-1.0@224"), (r"^NASNet-Large", None),
    (r"^EfficientNet-Lite0", "efficientnet-lite0@224"), (r"^EfficientNet-Lite1", "efficientnet-lite1@240"),
    (r"^EfficientNet-Lite2", "efficientnet-lite2@260"), (r"^EfficientNet-Lite3", "efficientnet-lite3@280"),
    (r"^EDSR", "edsr-r16f64-x2@224"), (r"^EfficientNetV2-S", "efficientnetv2-s@384"),
    (r"^SSDLite320", "ssdlite-mnv3-large@320"), (r"^YOLO26n", "yolo26n@512"), (r"^YOLO26x", "yolo26x@512"),
    (r"^DeepLabV3-ResNet101", "deeplabv3-resnet101@520"), (r"^LRASPP", "lraspp-mnv3-large@520"),
    (r"^ResNet-101", "resnet101@224"), (r"^ConvNeXt-Tiny", "convnext-tiny@224"), (r"^BEiT-Base", "beit-base@224"),
    (r"^MNASNet-0.5", "mnasnet-0.5@224"), (r"^RegNetX-3.2GF", "regnetx-3.2gf@224"),
]
_SD_COMPONENTS = {"text_encoder": "clip-text-base", "unet": "sd15-unet@64", "vae": "sd15-vae-decoder@64"}


@dataclass(frozen=True, kw_only=True)
class CalibRow:
    """One normalised calibration latency.

    Attributes:
        arch: architecture key of ``archs.ARCHS``.
        model: the CSV's model name.
        device: the CSV's phone name.
        platform: ``ios`` or ``android``.
        unit: ``cpu``, ``cpu1`` (one core), ``gpu`` or ``npu``.
        precision: ``fp32``, ``fp16``, ``int8-static`` or ``w8a16``.
        runtime: the CSV's runtime text.
        latency_ms: the published latency (ms).
        source: the CSV's source column.
    """

    arch: str
    model: str
    device: str
    platform: str
    unit: str
    precision: str
    runtime: str
    latency_ms: float
    source: str

    @property
    def family(self) -> str:
        """The (platform, unit, precision) family key."""
        return family_key(self.platform, self.unit, self.precision)

    @property
    def format(self) -> str:
        """The runtime's format: ``tflite``, ``onnx``, ``qnn``, ``executorch`` or ``coreml``."""
        return runtime_format(self.runtime)

    @property
    def device_unit(self) -> str:
        """``"<profile name>/<unit>"``, the key of ``Calibration.device_factor`` (phones sharing a
        profile's SoC share its key)."""
        return device_unit_key(_profile_name(self.device), self.unit)


@functools.cache
def _profile_name(device: str) -> str:
    return spec_for(device).name


def device_unit_key(profile: str, unit: str) -> str:
    """Key of ``Calibration.device_factor``: ``"pixel-4/cpu"`` (``cpu1`` shares ``cpu``)."""
    return f"{profile}/{'cpu' if unit == 'cpu1' else unit}"


def runtime_format(runtime: str) -> str:
    """Map the CSV's runtime text to a format name."""
    rt = runtime.lower()
    if rt.startswith("qnn"):
        return "qnn"
    if "onnx" in rt:
        return "onnx"
    if "tflite" in rt or "tensorflow lite" in rt:
        return "tflite"
    if "executorch" in rt:
        return "executorch"
    return "coreml"


@dataclass(frozen=True)
class Calibration:
    """Everything fitted: per-family roofline params, a latency factor per runtime format and one
    per calibration phone and unit.

    Attributes:
        families: ``{family key or "*/<unit>/*": FamilyParams}``.
        format_factor: ``{format: multiplier}`` applied to a whole-model estimate.
        device_factor: ``{"<profile>/<unit>": multiplier}`` for the phones of the calibration set
            (what one phone's clocks, thermals and driver do that its paper specs don't say);
            other phones get 1.
    """

    families: dict[str, FamilyParams]
    format_factor: dict[str, float]
    device_factor: dict[str, float] = field(default_factory=dict)


def _arch_of(model: str, variant: str) -> str | None:
    if model.startswith("Stable Diffusion"):
        m = re.search(r"component=(\w+)", variant)
        return _SD_COMPONENTS.get(m.group(1)) if m else None
    for pattern, arch in _ARCH_RULES:
        if re.search(pattern, model):
            return arch
    return None


def _unit_of(unit: str, runtime: str, precision: str) -> str:
    u = unit.lower()
    if "single large core" in u:
        return "cpu1"
    if u.startswith("cpu"):
        return "cpu"
    if u.startswith("gpu"):
        return "gpu"
    if "core ml" in u or "core ml" in runtime.lower() or u.startswith("not stated"):
        return "gpu" if precision == "fp32" else "npu"  # fp32 Core ML models cannot run on the ANE
    return "npu"  # NPU, ANE, HTP, TPU, NNAPI


def _precision_of(prec: str, runtime: str) -> str:
    p = prec.lower()
    if p.startswith("w8a16"):
        return "w8a16"
    if p.startswith("int8") or "w8a8" in p or "q8" in runtime.lower():
        return "int8-static"
    if p.startswith("fp32"):
        return "fp32"
    if p.startswith("fp16"):
        return "fp16"
    # not stated: Core ML converts to fp16; XNNPACK runs the float model in fp32
    return "fp16" if "core ml" in runtime.lower() or "coreml" in runtime.lower() else "fp32"


def parse_rows(csv_path: str | Path) -> tuple[list[CalibRow], list[dict[str, str]]]:
    """Read and normalise the calibration CSV.

    Returns:
        (usable rows, skipped rows with a ``reason`` key).

    Raises:
        ConfigError: the file is missing or lacks a required column.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise ConfigError(f"calibration CSV not found: {path}", where=str(path),
                          fix="pass the path to device_latency_calibration.csv")
    rows, skipped = [], []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"model", "variant", "device", "runtime", "compute_unit", "precision", "latency_ms"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"calibration CSV lacks columns {sorted(missing)}", where=str(path))
        for r in reader:
            arch = _arch_of(r["model"], r["variant"])
            if arch is None:
                skipped.append({**r, "reason": "no architecture definition"})
                continue
            if "caution" in r.get("stat", "").lower():
                # the CSV flags numbers that are not comparable (e.g. react-native-executorch's
                # 0.7.x docs, which time pre/post-processing too: 3.5-13x the 0.9.x forward-only
                # numbers of the same model on the same iPhone 17 Pro)
                skipped.append({**r, "reason": f"flagged in the CSV's stat column: {r['stat']}"})
                continue
            precision = _precision_of(r["precision"], r["runtime"])
            unit = _unit_of(r["compute_unit"], r["runtime"], precision)
            if unit == "npu" and precision == "fp32":
                precision = "fp16"  # NPUs run float models at fp16 (NNAPI relaxed precision)
            platform = spec_for(r["device"]).platform
            rows.append(CalibRow(arch=arch, model=r["model"], device=r["device"], platform=platform, unit=unit,
                                 precision=precision, runtime=r["runtime"], latency_ms=float(r["latency_ms"]),
                                 source=r.get("source", "")))
    return rows, skipped


def build_features(csv_path: str | Path, out_path: str | Path = FEATURES_PATH, *, only: set[str] | None = None,
                   on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Cost every calibration architecture and write ``calibration_features.json`` atomically.

    Args:
        csv_path: the calibration CSV.
        out_path: where to write the features (default: the shipped file).
        only: rebuild just these architectures, keeping the others from the existing file.
        on_progress: optional ``(stage, done, total)`` callback.

    Returns:
        The written document.
    """
    from mobilekit._io import write_json_atomic
    from mobilekit.estimation.archs import ARCHS, build_arch
    from mobilekit.estimation.graph import analyze

    rows, skipped = parse_rows(csv_path)
    needed = sorted({r.arch for r in rows})
    archs: dict[str, Any] = {}
    if only is not None and Path(out_path).is_file():
        old = json.loads(Path(out_path).read_text())["archs"]
        archs = {k: v for k, v in old.items() if k in needed and k not in only}
        needed = [n for n in needed if n not in archs]
    for i, name in enumerate(needed):
        if on_progress:
            on_progress(name, i, len(needed))
        model, inputs = build_arch(name)
        cost = analyze(model, inputs)
        archs[name] = {"description": ARCHS[name][1], "params_m": cost.params / 1e6, "macs_g": cost.macs / 1e9,
                       "flops_g": cost.flops / 1e9, "ops": [o.to_row() for o in cost.ops]}
        logger.info("%s: %.2f M params, %.3f GMACs, %d ops", name, cost.params / 1e6, cost.macs / 1e9, len(cost.ops))
    doc = {"version": FEATURES_VERSION, "csv": Path(csv_path).name, "archs": archs,
           "rows": [r.__dict__ for r in rows],
           "skipped": [{"model": s["model"], "device": s["device"], "reason": s["reason"]} for s in skipped]}
    write_json_atomic(Path(out_path), doc)
    if on_progress:
        on_progress("done", len(needed), len(needed))
    return doc


@functools.cache
def load_features(path: str | None = None) -> dict[str, Any]:
    """The shipped calibration features (rows and per-architecture ops)."""
    p = Path(path) if path else FEATURES_PATH
    if not p.is_file():
        raise ConfigError(f"calibration features missing: {p}", where=str(p),
                          fix="run `python -m mobilekit.estimation.fit CSV` to rebuild them")
    doc = json.loads(p.read_text())
    for r in doc["rows"]:  # keep in step with parse_rows for files built before a rule changed
        if r["unit"] == "npu" and r["precision"] == "fp32":
            r["precision"] = "fp16"
    return doc


def rows_of(doc: dict[str, Any]) -> list[CalibRow]:
    """The CalibRows stored in a features document."""
    return [CalibRow(**r) for r in doc["rows"]]


@dataclass
class _Prepared:
    """All calibration rows priced as flat arrays, so a family's objective is one vector op."""

    flops: np.ndarray        # per op
    byts: np.ndarray
    peak: np.ndarray         # per op: GOP/s of the row's unit
    bw: np.ndarray           # per op: GB/s of the row's device
    free: np.ndarray         # per op: integer-only
    dw: np.ndarray           # per op: depthwise conv
    mm: np.ndarray           # per op: matmul or attention
    fused: np.ndarray        # per op: elementwise, fused into its producer (no per-op overhead)
    row_of_op: np.ndarray
    n_rows: int
    y: np.ndarray            # log latency per row (log ms)


def _prepare(rows: list[CalibRow], archs: dict[str, Any]) -> _Prepared:
    priced = []
    op_cache: dict[str, OpArrays] = {}
    for r in rows:
        ops = op_cache.setdefault(r.arch, OpArrays.from_rows(archs[r.arch]["ops"]))
        # every op at the precision it runs at (the same function estimate() prices with)
        keys = needed_keys(ops, fmt=r.format, unit=r.unit, precision=r.precision)
        spec = spec_for(r.device, keys)
        try:
            op_plan = plan(ops, fmt=r.format, unit=r.unit, precision=r.precision, peaks=spec.peaks)
        except KeyError as exc:
            raise ConfigError(f"no {exc.args[0]} peak for {r.device}", where="calibration device specs") from None
        if spec.bandwidth_gbps is None:
            raise ConfigError(f"no bandwidth for {r.device}", where="calibration device specs")
        priced.append((ops, op_plan.byts, op_plan.peak, spec.bandwidth_gbps))
    return prepare_priced(priced, [r.latency_ms for r in rows])


def prepare_priced(priced: list[tuple[OpArrays, np.ndarray, np.ndarray, float]],
                   latency_ms: list[float]) -> _Prepared:
    """Rows already priced (ops, per-op bytes and peak from ``precision.plan``, bandwidth GB/s) and their
    measured latency (ms), as the flat arrays ``_fit_one`` fits: the published rows here, the user's own
    reports in ``device_calibration``."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("flops", "byts", "peak", "bw", "free", "dw", "mm",
                                                          "fused", "row")}
    dw_kind = KINDS.index("dwconv")
    mm_kinds = [KINDS.index("matmul"), KINDS.index("attention")]
    for i, (ops, byts, peak, bw) in enumerate(priced):
        n = len(ops.flops)
        parts["flops"].append(ops.flops)
        parts["byts"].append(byts)
        parts["peak"].append(np.broadcast_to(np.asarray(peak, dtype=float), (n,)))
        parts["bw"].append(np.full(n, bw))
        parts["free"].append(ops.int_only)
        parts["dw"].append(ops.kind == dw_kind)
        parts["mm"].append(np.isin(ops.kind, mm_kinds))
        parts["fused"].append(ops.fused())
        parts["row"].append(np.full(n, i))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    return _Prepared(flops=cat["flops"], byts=cat["byts"], peak=cat["peak"], bw=cat["bw"], free=cat["free"].astype(bool),
                     dw=cat["dw"].astype(bool), mm=cat["mm"].astype(bool), fused=cat["fused"].astype(bool),
                     row_of_op=cat["row"].astype(int), n_rows=len(priced),
                     y=np.log(np.asarray(latency_ms, dtype=float)))


def _predict_log(prep: _Prepared, theta: np.ndarray, op_mask: np.ndarray) -> np.ndarray:
    ec, em, o, c0, dw, mm = np.exp(theta)
    flops = prep.flops[op_mask] * np.where(prep.dw[op_mask], dw, np.where(prep.mm[op_mask], mm, 1.0))
    t = np.maximum(flops / (prep.peak[op_mask] * ec), prep.byts[op_mask] / (prep.bw[op_mask] * em))
    t = t * 1e-6 + np.where(prep.fused[op_mask], 0.0, o * 1e-3)  # flops / GOP/s * 1e-6 = ms
    t = np.where(prep.free[op_mask], 0.0, t)
    total = np.bincount(prep.row_of_op[op_mask], weights=t, minlength=prep.n_rows) + c0
    return np.log(np.maximum(total, 1e-9))


def _fit_one(prep: _Prepared, row_idx: np.ndarray, prior: np.ndarray, lam: float,
             offset: np.ndarray | None = None,
             bounds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Least squares on log latency of the rows ``row_idx`` for the ``N_PARAMS`` log params, pulled toward
    ``prior`` with weight ``lam`` (in rows), within ``bounds`` (log; default none)."""
    from scipy.optimize import least_squares

    op_mask = np.isin(prep.row_of_op, row_idx)
    # slice once: the objective runs ~100 times
    flops, byts = prep.flops[op_mask], prep.byts[op_mask]
    peak, bw, free, dw = prep.peak[op_mask], prep.bw[op_mask], prep.free[op_mask], prep.dw[op_mask]
    mm = prep.mm[op_mask]
    unfused = ~prep.fused[op_mask]
    _, local = np.unique(prep.row_of_op[op_mask], return_inverse=True)
    n_local = int(local.max()) + 1 if local.size else 0
    sqrt_lam = math.sqrt(lam)
    target = prep.y[row_idx] - (offset[row_idx] if offset is not None else 0.0)
    order = np.argsort(row_idx)  # np.unique sorts rows; map back to row_idx order
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)

    def resid(theta: np.ndarray) -> np.ndarray:
        ec, em, o, c0, d, m = np.exp(theta)
        t = np.maximum(flops * np.where(dw, d, np.where(mm, m, 1.0)) / (peak * ec), byts / (bw * em))
        t = t * 1e-6 + unfused * (o * 1e-3)
        t = np.where(free, 0.0, t)
        total = np.bincount(local, weights=t, minlength=n_local) + c0
        pred = np.log(np.maximum(total, 1e-9))[inv]
        return np.concatenate([pred - target, sqrt_lam * (theta - prior)])

    if bounds is None:
        return least_squares(resid, prior.copy(), method="trf", x_scale=1.0, max_nfev=200).x
    lo, hi = bounds
    return least_squares(resid, np.clip(prior, lo, hi), method="trf", x_scale=1.0, max_nfev=200, bounds=(lo, hi)).x


def fit(rows: list[CalibRow], archs: dict[str, Any], prep: _Prepared | None = None,
        use: np.ndarray | None = None) -> Calibration:
    """Fit FamilyParams for every unit (``"*/<unit>/*"``) and family seen in ``rows``, a factor per
    format and one per phone and unit.

    Families are fitted first; then each format's mean log residual (shrunk toward 0) becomes
    its factor, then each phone × unit's mean log residual after the format factors (shrunk
    toward 0 by ``_DEVICE_SHRINK`` pseudo-rows) its factor; then the families are refitted
    with both factors taken out.

    Args:
        rows: calibration rows.
        archs: per-architecture ops (``load_features()["archs"]``).
        prep: rows already prepared by ``_prepare`` (speeds up leave-one-out).
        use: boolean mask of the rows to fit on (default all).

    Returns:
        The Calibration.
    """
    prep = prep or _prepare(rows, archs)
    use = np.ones(len(rows), dtype=bool) if use is None else use
    off_fmt, off_dev = np.zeros(len(rows)), np.zeros(len(rows))
    factors: dict[str, float] = {}
    dev_factors: dict[str, float] = {}
    families: dict[str, FamilyParams] = {}
    for _round in range(2):
        families = _fit_families(rows, prep, use, off_fmt + off_dev)
        base = np.log(predict_rows(rows, prep, Calibration(families, {}), use))
        factors = _shrunk_factors([r.format for r in rows], prep.y - base - off_dev, use, _FORMAT_SHRINK)
        off_fmt = np.array([math.log(factors.get(r.format, 1.0)) for r in rows])
        dev_factors = _shrunk_factors([r.device_unit for r in rows], prep.y - base - off_fmt, use, _DEVICE_SHRINK)
        off_dev = np.array([math.log(dev_factors.get(r.device_unit, 1.0)) for r in rows])
    return Calibration(families, factors, dev_factors)


def _shrunk_factors(keys: list[str], log_res: np.ndarray, use: np.ndarray, shrink: float) -> dict[str, float]:
    """Per key, exp(mean log residual of its used rows), the mean shrunk toward 0 by ``shrink`` pseudo-rows."""
    out = {}
    for key in sorted({k for k, u in zip(keys, use) if u}):
        idx = [i for i, k in enumerate(keys) if use[i] and k == key]
        out[key] = float(math.exp(log_res[idx].sum() / (len(idx) + shrink)))
    return out


def _fit_families(rows: list[CalibRow], prep: _Prepared, use: np.ndarray, offset: np.ndarray) -> dict[str, FamilyParams]:
    out: dict[str, FamilyParams] = {}
    units = sorted({"cpu" if r.unit == "cpu1" else r.unit for r in rows})
    for unit in units:
        idx = np.array([i for i, r in enumerate(rows) if use[i] and ("cpu" if r.unit == "cpu1" else r.unit) == unit])
        theta_u = _fit_one(prep, idx, _PRIOR, _LAMBDA_UNIT, offset) if idx.size else _PRIOR
        out[f"*/{unit}/*"] = _params(theta_u, int(idx.size), f"*/{unit}/*")
        for fam in sorted({r.family for i, r in enumerate(rows) if use[i] and r.family.split("/")[1] == unit}):
            fidx = np.array([i for i, r in enumerate(rows) if use[i] and r.family == fam])
            out[fam] = _params(_fit_one(prep, fidx, theta_u, _LAMBDA_FAMILY, offset), int(fidx.size), fam)
    return out


def _params(theta: np.ndarray, n: int, key: str) -> FamilyParams:
    ec, em, o, c0, dw, mm = (float(v) for v in np.exp(theta))
    return FamilyParams(eff_compute=ec, eff_memory=em, overhead_us=o, fixed_ms=c0, dw_factor=dw, mm_factor=mm,
                        n=n, key=key)


def log_params(p: FamilyParams) -> np.ndarray:
    """Log params in ``_fit_one``'s order: eff_compute, eff_memory, overhead_us, fixed_ms, dw_factor, mm_factor."""
    return np.log([p.eff_compute, p.eff_memory, p.overhead_us, p.fixed_ms, p.dw_factor, p.mm_factor])


def params_for(cal: Calibration, platform: str, unit: str, precision: str) -> FamilyParams:
    """The family's params, backing off to the family of the float precision its unquantized ops
    run at (``android/cpu/int8-dynamic`` -> ``android/cpu/fp32``: XNNPACK runs its convolutions as
    the fp32 recipe does), then to the unit-wide fit, then to the prior."""
    fitted = cal.families
    fam = family_key(platform, unit, precision)
    if fam in fitted:
        return fitted[fam]
    u = "cpu" if unit == "cpu1" else unit
    flt = family_key(platform, unit, float_precision(precision, u))
    if flt in fitted:
        return fitted[flt]
    if f"*/{u}/*" in fitted:
        return fitted[f"*/{u}/*"]
    return _params(_PRIOR, 0, "prior")


def predict_rows(rows: list[CalibRow], prep: _Prepared, cal: Calibration, which: np.ndarray) -> np.ndarray:
    """Predicted latency (ms) of the rows selected by the boolean mask ``which`` (NaN elsewhere)."""
    theta = np.zeros((len(rows), N_PARAMS))
    factor = np.ones(len(rows))
    for i, r in enumerate(rows):
        p = params_for(cal, r.platform, r.unit, r.precision)
        theta[i] = log_params(p)
        factor[i] = cal.format_factor.get(r.format, 1.0) * cal.device_factor.get(r.device_unit, 1.0)
    op_mask = which[prep.row_of_op]
    th = np.exp(theta)
    per_op = th[prep.row_of_op[op_mask]]
    flops = prep.flops[op_mask] * np.where(prep.dw[op_mask], per_op[:, 4],
                                           np.where(prep.mm[op_mask], per_op[:, 5], 1.0))
    t = np.maximum(flops / (prep.peak[op_mask] * per_op[:, 0]), prep.byts[op_mask] / (prep.bw[op_mask] * per_op[:, 1]))
    t = np.where(prep.free[op_mask], 0.0, t * 1e-6 + np.where(prep.fused[op_mask], 0.0, per_op[:, 2] * 1e-3))
    total = np.bincount(prep.row_of_op[op_mask], weights=t, minlength=len(rows)) + th[:, 3]
    return np.where(which, total * factor, np.nan)


def leave_one_model_out(rows: list[CalibRow], archs: dict[str, Any], *,
                        on_progress: Callable[[str, int, int], None] | None = None) -> np.ndarray:
    """Predict every row from a fit that never saw its architecture.

    Returns:
        Predicted latency (ms) per row, in ``rows`` order.
    """
    return _leave_one_group_out(rows, archs, [r.arch for r in rows], on_progress)


def leave_one_device_out(rows: list[CalibRow], archs: dict[str, Any], *,
                         on_progress: Callable[[str, int, int], None] | None = None) -> np.ndarray:
    """Predict every row from a fit that never saw its phone (phones sharing a profile's SoC are
    held out together, so a held-out phone gets no device factor): how the estimator does on a
    phone outside the calibration set.

    Returns:
        Predicted latency (ms) per row, in ``rows`` order.
    """
    return _leave_one_group_out(rows, archs, [device_group(r) for r in rows], on_progress)


def device_group(row: CalibRow) -> str:
    """The leave-one-device-out group of a row: the profile its phone maps to."""
    return _profile_name(row.device)


def _leave_one_group_out(rows: list[CalibRow], archs: dict[str, Any], group_of: list[str],
                         on_progress: Callable[[str, int, int], None] | None) -> np.ndarray:
    prep = _prepare(rows, archs)
    groups = sorted(set(group_of))
    pred = np.full(len(rows), np.nan)
    for k, group in enumerate(groups):
        if on_progress:
            on_progress(group, k, len(groups))
        held = np.array([g == group for g in group_of])
        fitted = fit(rows, archs, prep, use=~held)
        pred[held] = predict_rows(rows, prep, fitted, held)[held]
    return pred


@functools.cache
def fitted_params() -> Calibration:
    """The Calibration fitted on every shipped calibration row: read from ``calibration_loo.json``
    when it holds one, else fitted now (once per process)."""
    from mobilekit.estimation.bands import LOO_PATH

    if LOO_PATH.is_file():
        shipped = json.loads(LOO_PATH.read_text()).get("fit")
        if shipped:
            return Calibration({k: FamilyParams.from_dict(v) for k, v in shipped["families"].items()},
                               {k: float(v) for k, v in shipped["format_factor"].items()},
                               {k: float(v) for k, v in shipped.get("device_factor", {}).items()})
    doc = load_features()
    return fit(rows_of(doc), doc["archs"])


def build_loo(out_path: str | Path | None = None, *,
              on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run leave-one-model-out and leave-one-device-out on the shipped features and write
    ``calibration_loo.json`` atomically.

    The file holds, per calibration row, the measured and the held-out predicted latency (both
    ways), the per-group band table built from the leave-one-model-out residuals
    (``bands.build_table``; ``band_for`` reads it), and the fit on all rows (which
    ``fitted_params`` loads, so estimating needs neither scipy nor a refit).
    """
    from mobilekit._io import write_json_atomic
    from mobilekit.estimation.bands import LOO_PATH, UNSEEN_DEVICE_KEY, build_table, nested_coverage

    doc = load_features()
    rows = rows_of(doc)
    pred = leave_one_model_out(rows, doc["archs"], on_progress=on_progress)
    pred_dev = leave_one_device_out(rows, doc["archs"], on_progress=on_progress)
    cols = ([r.family for r in rows], [r.arch for r in rows], [r.latency_ms for r in rows], list(pred))
    table = build_table(*cols)
    # for phones outside the calibration set: leave-one-device-out residuals, nested by phone
    cols_dev = ([r.family for r in rows], [device_group(r) for r in rows], [r.latency_ms for r in rows],
                list(pred_dev))
    table_dev = build_table(*cols_dev)
    full = fit(rows, doc["archs"])
    out = {"version": FEATURES_VERSION,
           "method": "leave-one-model-out (grouped by architecture); predicted_lodo_ms: leave-one-device-out "
                     "(grouped by the profile a phone maps to)",
           "fit": {"families": {k: v.to_dict() for k, v in full.families.items()},
                   "format_factor": full.format_factor, "device_factor": full.device_factor},
           "bands": table, "nested_coverage": nested_coverage(*cols, table=table),
           UNSEEN_DEVICE_KEY: table_dev,
           "nested_coverage_unseen_device": nested_coverage(*cols_dev, table=table_dev),
           "rows": [{"arch": r.arch, "device": r.device, "family": r.family, "runtime": r.runtime,
                     "measured_ms": r.latency_ms, "predicted_ms": float(p), "predicted_lodo_ms": float(q)}
                    for r, p, q in zip(rows, pred, pred_dev)]}
    write_json_atomic(Path(out_path) if out_path else LOO_PATH, out)
    return out


if __name__ == "__main__":
    # python -m mobilekit.estimation.fit CSV   rebuilds both shipped files;
    # python -m mobilekit.estimation.fit --loo-only   only calibration_loo.json (fit, residuals, bands)
    import sys

    logging.basicConfig(level=logging.INFO)
    if sys.argv[1:] != ["--loo-only"]:
        build_features(sys.argv[1])
        load_features.cache_clear()
    build_loo()
