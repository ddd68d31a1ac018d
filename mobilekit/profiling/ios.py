"""Measure a Core ML artifact on a USB-connected iPhone (macOS with Xcode only).

Uses coremltools' experimental remote-device benchmarking: ``Device.get_connected_devices``
(which drives ``xcrun devicectl``), ``prepare_for_model_debugging`` (builds and installs
coremltools' ``modelrunner`` app, which needs signing credentials) and ``MLModelBenchmarker``.
Anywhere else, ``profile_ios`` raises a DeviceError that says why.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mobilekit.errors import ConfigError, DeviceError
from mobilekit.profiling.report import LatencyReport
from mobilekit.profiling.stats import summarize


def check_ios_tools() -> None:
    """Raise DeviceError unless this is macOS with ``xcrun devicectl`` (Xcode 15+) available."""
    if sys.platform != "darwin":
        raise DeviceError(f"profiling on an iPhone needs macOS with Xcode; this host is {sys.platform}",
                          where="host", fix="run `mobilekit profile --device` on a Mac with the iPhone connected")
    if shutil.which("xcrun") is None:
        raise DeviceError("xcrun was not found", where="PATH", fix="install Xcode and run `xcode-select --install`")
    try:
        proc = subprocess.run(["xcrun", "devicectl", "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DeviceError(f"xcrun devicectl cannot run: {exc}", where="xcrun devicectl",
                          fix="install Xcode 15 or newer") from exc
    if proc.returncode != 0:
        raise DeviceError("xcrun devicectl is not available", where="xcrun devicectl", fix="install Xcode 15 or newer")


def connected_iphones() -> list[Any]:
    """Connected iPhones as coremltools ``Device`` objects (empty when none)."""
    check_ios_tools()
    from coremltools.models.ml_program.experimental.remote_device import Device, DeviceType

    return list(Device.get_connected_devices(DeviceType.IPHONE))


def profile_ios(artifact: str | Path, *, device: str | None = None, target: str | None = None,
                iterations: int = 50, development_team: str | None = None,
                compute_units: str = "ALL") -> LatencyReport:
    """Measure an ``.mlpackage`` on a connected iPhone with coremltools' remote-device benchmarker.

    Args:
        artifact: an ``.mlpackage`` (or ``.mlmodel``).
        device: the device name or UDID; None when exactly one iPhone is connected.
        target: target name recorded in the report.
        iterations: timed predictions.
        development_team: Apple development team id used to sign the ``modelrunner`` app.
        compute_units: Core ML compute units (``ALL``, ``CPU_ONLY``, ``CPU_AND_GPU``, ``CPU_AND_NE``).

    Returns:
        A ``LatencyReport`` with ``source="device"``.

    Raises:
        DeviceError: not macOS, no Xcode, no iPhone, or the benchmark failed.

    Example:
        >>> profile_ios("out/model.mlpackage", development_team="ABCDE12345")  # doctest: +SKIP
    """
    path = Path(artifact)
    if not path.exists():
        raise ConfigError("artifact not found", where=str(path), fix="check the path, or re-export")
    if path.suffix not in (".mlpackage", ".mlmodel"):
        raise ConfigError(f"iPhone profiling takes Core ML artifacts, not {path.suffix!r}", where=str(path),
                          fix="export a coreml recipe (or profile .pte files with the ExecuTorch iOS benchmark app)")
    phones = connected_iphones()
    if device is not None:
        phones = [p for p in phones if device in (p.name, p.udid, p.identifier)]
    if not phones:
        raise DeviceError("no iPhone is connected" + (f" named {device!r}" if device else ""),
                          where="xcrun devicectl list devices",
                          fix="connect the iPhone by USB, unlock it, trust this Mac and enable Developer Mode")
    if len(phones) > 1:
        raise DeviceError(f"{len(phones)} iPhones are connected", where="xcrun devicectl",
                          fix=f"pick one with --device: {', '.join(p.name for p in phones)}")
    import coremltools as ct
    from coremltools.models.ml_program.experimental.perf_utils import MLModelBenchmarker
    from coremltools.models.ml_program.experimental.remote_device import AppSigningCredentials

    phone = phones[0]

    async def run() -> tuple[Any, Any, Any]:
        creds = AppSigningCredentials(development_team=development_team) if development_team else None
        prepared = await phone.prepare_for_model_debugging(credentials=creds)
        model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        bench = MLModelBenchmarker(model=model, device=prepared)
        load = await bench.benchmark_load(iterations=1)
        predict = await bench.benchmark_predict(iterations=iterations, warmup=True)
        return prepared, load, predict

    try:
        _, load, predict = asyncio.run(run())
    except Exception as exc:
        raise DeviceError(f"benchmarking on {phone.name} failed: {exc}", where=str(path),
                          fix="check signing (--development-team) and that the phone stays unlocked") from exc
    samples = [float(s) for s in predict.samples]
    return LatencyReport(
        artifact=str(path), format="coreml", runtime="coreml", source="device",
        device={"name": phone.name, "os": f"iOS {phone.os_version}", "serial": phone.udid},
        target=target, samples_ms=tuple(samples), stop_reason="fixed", warmup=1,
        cold_load_ms=float(load.samples[0]) if load.samples else None,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=(f"compute units {compute_units}",), **summarize(samples))
