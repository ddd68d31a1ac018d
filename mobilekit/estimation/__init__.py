"""Latency estimates without a phone: graph costs × a roofline calibrated on published latencies.

Modules, one job each: ``graph`` (FLOPs and bytes per ATen op), ``devices`` (peak throughput
and bandwidth per phone), ``model`` (the roofline), ``fit`` (fitting it on the published
calibration latencies), ``precision`` (which precision each op of a recipe's artifact runs at;
the fit and ``estimate`` both price ops through it), ``bands`` (per-group uncertainty whose
claimed coverage is the one measured leave-one-model-out), ``api``
(``estimate``, ``estimate_all``, ``LatencyEstimate``), ``host`` (this machine as a profile),
``archs`` (the calibration architectures; used only to rebuild the shipped features),
``device_calibration`` (``calibrate``: refit one device on the user's own LatencyReports) and
``calibration_store`` (where those per-device calibrations live; ``estimate`` reads them).

Example:
    >>> from mobilekit.estimation import estimate
    >>> est = estimate(model, (x,), target="pixel-8", precision="fp16")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "CalibrationResult": "mobilekit.estimation.device_calibration:CalibrationResult",
    "DeviceCalibration": "mobilekit.estimation.calibration_store:DeviceCalibration",
    "calibrate": "mobilekit.estimation.device_calibration:calibrate",
    "reset_calibration": "mobilekit.estimation.calibration_store:reset_calibration",
    "HostTarget": "mobilekit.estimation.host:HostTarget",
    "LatencyEstimate": "mobilekit.estimation.api:LatencyEstimate",
    "estimate": "mobilekit.estimation.api:estimate",
    "estimate_all": "mobilekit.estimation.api:estimate_all",
    "measure_host": "mobilekit.estimation.host:measure_host",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from mobilekit.estimation.api import LatencyEstimate, estimate, estimate_all
    from mobilekit.estimation.calibration_store import DeviceCalibration, reset_calibration
    from mobilekit.estimation.device_calibration import CalibrationResult, calibrate
    from mobilekit.estimation.host import HostTarget, measure_host


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mobilekit.estimation' has no attribute {name!r}") from None
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
