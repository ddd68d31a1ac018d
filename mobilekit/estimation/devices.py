"""Paper specs (peak throughput per compute unit, memory bandwidth) for the roofline.

Numbers come from the device profiles (``mobilekit.targets``) first. Profiles leave a number
out when the maker does not publish it (most NPU and many GPU peaks, Google's memory
bandwidth); for those the estimator uses, in order:

1. ``APPROX_SPECS`` below: widely quoted vendor or press figures, marked ``vendor-approx``;
2. a log-linear fit over the launch year of every other device of the same platform and
   compute unit that has the number, marked ``imputed``.

The calibration set also names phones that have no profile (Pixel 1 and 2); ``CALIB_DEVICES``
gives them a year, platform and approximate specs, and maps phones that share a SoC with a
profile (iPhone 14, iPhone SE 3, OnePlus 12) onto that profile.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from mobilekit.errors import ConfigError

# precision of an export recipe -> key of ComputeUnit.peak_gops used for its arithmetic
PEAK_KEY = {"fp32": "fp32", "fp16": "fp16", "int8-weight": "fp32", "int8-dynamic": "int8",
            "int8-static": "int8", "w8a16": "fp16"}



def peak_key(precision: str, unit: str) -> str:
    """Key of ``ComputeUnit.peak_gops`` for a recipe precision on a unit.

    Weight-only int8 dequantizes to the unit's float type: fp32 on a CPU, fp16 on a GPU or NPU
    (the Apple Neural Engine has no fp32 arithmetic at all).
    """
    if precision == "int8-weight" and unit in ("gpu", "npu"):
        return "fp16"
    return PEAK_KEY[precision]


# Widely quoted figures for numbers the profiles leave out (GOP/s or GB/s). Approximate.
APPROX_SPECS: dict[str, dict[str, float]] = {
    # Qualcomm quotes NPU TOPS loosely; these are the commonly reported int8 figures.
    "pixel-3": {"gpu.fp32": 727.0, "gpu.fp16": 1454.0, "npu.int8": 3000.0, "cpu1.fp32": 20.0},
    "pixel-4": {"gpu.fp32": 899.0, "gpu.fp16": 1798.0, "npu.int8": 7000.0},
    "galaxy-s22": {"gpu.fp32": 2200.0, "gpu.fp16": 4400.0, "npu.int8": 27000.0},
    "galaxy-s23": {"gpu.fp32": 3000.0, "gpu.fp16": 6000.0, "npu.int8": 36000.0},
    "galaxy-s24": {"gpu.fp32": 4600.0, "gpu.fp16": 9200.0, "npu.int8": 45000.0},
    "galaxy-s25": {"gpu.fp32": 5000.0, "gpu.fp16": 10000.0, "npu.int8": 70000.0},
    "snapdragon-8-elite-gen5-qrd": {"gpu.fp32": 6000.0, "gpu.fp16": 12000.0, "npu.int8": 100000.0, "bw": 84.8},
    "snapdragon-7-gen4-qrd": {"gpu.fp32": 1200.0, "gpu.fp16": 2400.0, "npu.int8": 20000.0, "bw": 51.2},
    "iphone-12-pro": {"gpu.fp32": 1000.0, "gpu.fp16": 1000.0},
    "iphone-13-pro": {"gpu.fp32": 1700.0, "gpu.fp16": 1700.0},
    "iphone-15-pro": {"gpu.fp32": 2150.0, "gpu.fp16": 2150.0},
    "iphone-17-pro": {"npu.int8": 40000.0, "npu.fp16": 20000.0},
}


@dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """What the roofline needs from one phone.

    Attributes:
        name: profile name (or calibration device key).
        platform: ``ios`` or ``android``.
        year: launch year.
        bandwidth_gbps: DRAM bandwidth (GB/s).
        peaks: ``"<unit>.<fp32|fp16|int8>"`` → peak GOP/s; ``cpu1`` is one big core.
        sources: same keys (plus ``bw``) → ``profile``, ``vendor-approx`` or ``imputed``.
    """

    name: str
    platform: str
    year: int
    bandwidth_gbps: float | None
    peaks: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


# Calibration-set phone names that no profile alias covers.
CALIB_DEVICES: dict[str, Any] = {
    "Google Pixel 1": DeviceSpec(name="pixel-1", platform="android", year=2016, bandwidth_gbps=29.9,
                                 peaks={"cpu.fp32": 60.0, "cpu1.fp32": 17.2, "gpu.fp32": 407.0},
                                 sources={"cpu.fp32": "vendor-approx", "cpu1.fp32": "vendor-approx",
                                          "gpu.fp32": "vendor-approx", "bw": "vendor-approx"}),
    "Google Pixel 2": DeviceSpec(name="pixel-2", platform="android", year=2017, bandwidth_gbps=29.9,
                                 peaks={"cpu.fp32": 75.0, "cpu1.fp32": 18.8, "gpu.fp32": 567.0},
                                 sources={"cpu.fp32": "vendor-approx", "cpu1.fp32": "vendor-approx",
                                          "gpu.fp32": "vendor-approx", "bw": "vendor-approx"}),
    "iPhone 14": "iphone-13-pro",     # A15, as in the 13 Pro
    "iPhone SE 3": "iphone-13-pro",   # A15
    "OnePlus 12": "galaxy-s24",       # Snapdragon 8 Gen 3
}


def spec_from_target(target: Any) -> DeviceSpec:
    """Collect the numbers a Target's profile gives (no fallbacks)."""
    peaks: dict[str, float] = {}
    sources: dict[str, str] = {}
    for unit in target.compute_units:
        for key, val in (unit.peak_gops or {}).items():
            if val and f"{unit.kind}.{key}" not in peaks:
                peaks[f"{unit.kind}.{key}"] = float(val)
                sources[f"{unit.kind}.{key}"] = "profile"
    bw = target.memory_bandwidth_gbps
    if bw:
        sources["bw"] = "profile"
    return DeviceSpec(name=target.name, platform=target.platform, year=int(target.year),
                      bandwidth_gbps=float(bw) if bw else None, peaks=peaks, sources=sources)


def _with_approx(spec: DeviceSpec) -> DeviceSpec:
    peaks, sources, bw = dict(spec.peaks), dict(spec.sources), spec.bandwidth_gbps
    for key, val in APPROX_SPECS.get(spec.name, {}).items():
        if key == "bw":
            if bw is None:
                bw, sources["bw"] = val, "vendor-approx"
        elif key not in peaks:
            peaks[key], sources[key] = val, "vendor-approx"
    # fp16 at half the int8 rate on NPUs that quote only int8 (Hexagon, ANE since A17)
    for unit in ("npu",):
        if f"{unit}.int8" in peaks and f"{unit}.fp16" not in peaks:
            peaks[f"{unit}.fp16"] = peaks[f"{unit}.int8"] / 2.0
            sources[f"{unit}.fp16"] = sources[f"{unit}.int8"]
    if "cpu.fp32" in peaks and "cpu1.fp32" not in peaks:
        peaks["cpu1.fp32"] = peaks["cpu.fp32"] / 4.0  # one big core of a ~4-big-core cluster
        sources["cpu1.fp32"] = "imputed"
    for unit in ("cpu", "cpu1"):
        if f"{unit}.fp32" in peaks:
            for key, mult in (("fp16", 1.0), ("int8", 2.0)):  # no fp16 ALUs / SDOT on old cores
                if f"{unit}.{key}" not in peaks:
                    peaks[f"{unit}.{key}"] = peaks[f"{unit}.fp32"] * mult
                    sources[f"{unit}.{key}"] = "imputed"
    return DeviceSpec(name=spec.name, platform=spec.platform, year=spec.year, bandwidth_gbps=bw,
                      peaks=peaks, sources=sources)


@functools.cache
def _known_specs() -> tuple[DeviceSpec, ...]:
    from mobilekit.targets import list_targets
    specs = [_with_approx(spec_from_target(t)) for t in list_targets()]
    specs += [_with_approx(v) for v in CALIB_DEVICES.values() if isinstance(v, DeviceSpec)]
    return tuple(specs)


def _impute(platform: str, key: str, year: int, exclude: str) -> float | None:
    pts = []
    for s in _known_specs():
        if s.platform != platform or s.name == exclude:
            continue
        val = s.bandwidth_gbps if key == "bw" else s.peaks.get(key)
        if val and (key == "bw" or s.sources.get(key) != "imputed"):
            pts.append((s.year, math.log(val)))
    if not pts:
        return None
    if len({y for y, _ in pts}) < 2:
        return math.exp(sum(v for _, v in pts) / len(pts))
    n = len(pts)
    my = sum(y for y, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    slope = sum((y - my) * (v - mv) for y, v in pts) / sum((y - my) ** 2 for y, _ in pts)
    return math.exp(mv + slope * (year - my))


def complete(spec: DeviceSpec, keys: tuple[str, ...] = ()) -> DeviceSpec:
    """Fill the numbers ``spec`` lacks: approximate vendor figures, then year-based imputation.

    Args:
        spec: the profile's own numbers.
        keys: peak keys (``"npu.int8"``) that must be present afterwards; bandwidth always is.
    """
    spec = _with_approx(spec)
    peaks, sources, bw = dict(spec.peaks), dict(spec.sources), spec.bandwidth_gbps
    if bw is None:
        bw = _impute(spec.platform, "bw", spec.year, spec.name)
        sources["bw"] = "imputed"
    for key in keys:
        if key not in peaks:
            val = _impute(spec.platform, key, spec.year, spec.name)
            if val is not None:
                peaks[key], sources[key] = val, "imputed"
    return DeviceSpec(name=spec.name, platform=spec.platform, year=spec.year, bandwidth_gbps=bw,
                      peaks=peaks, sources=sources)


def spec_for(target: Any, keys: tuple[str, ...] = ()) -> DeviceSpec:
    """The completed DeviceSpec of a Target, a target name, or a calibration-set phone name.

    Raises:
        ConfigError: the name is neither a profile nor a calibration phone.
    """
    if isinstance(target, DeviceSpec):
        return complete(target, keys)
    if isinstance(target, str) and target in CALIB_DEVICES:
        entry = CALIB_DEVICES[target]
        if isinstance(entry, DeviceSpec):
            return complete(entry, keys)
        target = entry
    if isinstance(target, str):
        from mobilekit.targets import get_target
        target = get_target(target)
    if not hasattr(target, "compute_units"):
        raise ConfigError(f"not a target: {target!r}", where="target", fix="pass a profile name such as 'pixel-8'")
    return complete(spec_from_target(target), keys)
