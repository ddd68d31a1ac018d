"""mobilekit: take generative image models from PyTorch to phones.

Train smaller (``mobilekit.train``), export to ExecuTorch, Core ML, TFLite and ONNX checked
against PyTorch (``export``), measure or estimate latency per phone (``profile``,
``estimate``; ``calibrate`` refits the estimate on your own measurements), and drive it all from one config in app builds (``build``).

Importing mobilekit is cheap: every name below loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> "module:attribute", resolved on first access
_LAZY: dict[str, str] = {
    "AdapterPolicy": "mobilekit.recipe:AdapterPolicy",
    "Artifact": "mobilekit.artifact:Artifact",
    "BackendUnavailableError": "mobilekit.errors:BackendUnavailableError",
    "BudgetError": "mobilekit.errors:BudgetError",
    "ConfigError": "mobilekit.errors:ConfigError",
    "DeviceError": "mobilekit.errors:DeviceError",
    "ExportError": "mobilekit.errors:ExportError",
    "Format": "mobilekit.recipe:Format",
    "Manifest": "mobilekit.artifact:Manifest",
    "MobilekitError": "mobilekit.errors:MobilekitError",
    "Parity": "mobilekit.parity:Parity",
    "ParityError": "mobilekit.errors:ParityError",
    "ParityMap": "mobilekit.module_parity:ParityMap",
    "ModuleParity": "mobilekit.module_parity:ModuleParity",
    "parity_map": "mobilekit.module_parity:parity_map",
    "Precision": "mobilekit.recipe:Precision",
    "Recipe": "mobilekit.recipe:Recipe",
    "RuntimeCrashError": "mobilekit.errors:RuntimeCrashError",
    "Target": "mobilekit.targets:Target",
    "TensorSpec": "mobilekit.artifact:TensorSpec",
    "UnsupportedOpError": "mobilekit.errors:UnsupportedOpError",
    "LatencyEstimate": "mobilekit.estimation.api:LatencyEstimate",
    "estimate": "mobilekit.estimation.api:estimate",
    "estimate_all": "mobilekit.estimation.api:estimate_all",
    "calibrate": "mobilekit.estimation.device_calibration:calibrate",
    "CalibrationResult": "mobilekit.estimation.device_calibration:CalibrationResult",
    "LatencyReport": "mobilekit.profiling.report:LatencyReport",
    "build": "mobilekit.building:build",
    "BuildResult": "mobilekit.build_result:BuildResult",
    "HostLatency": "mobilekit.build_result:HostLatency",
    "PhoneEstimate": "mobilekit.build_result:PhoneEstimate",
    "Budget": "mobilekit.profiling.budget:Budget",
    "BudgetCheck": "mobilekit.profiling.budget:BudgetCheck",
    "load_build_config": "mobilekit.build_config:load_build_config",
    "export": "mobilekit.exporting:export",
    "ExportPlan": "mobilekit.plan:ExportPlan",
    "Sampling": "mobilekit.sampling:Sampling",
    "SamplingParity": "mobilekit.sampling:SamplingParity",
    "plan_exports": "mobilekit.plan:plan_exports",
    "ZOO": "mobilekit.zoo:ZOO",
    "build_zoo_model": "mobilekit.zoo:build_zoo_model",
    "export_adapters": "mobilekit.adapters:export_adapters",
    "profile": "mobilekit.profiling.host:profile",
    "get_target": "mobilekit.targets:get_target",
    "list_targets": "mobilekit.targets:list_targets",
    "load_spec": "mobilekit.spec:load_spec",
    "run_artifact": "mobilekit.runtime:run_artifact",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from mobilekit.artifact import Artifact, Manifest, TensorSpec
    from mobilekit.errors import (BackendUnavailableError, BudgetError, ConfigError, DeviceError, ExportError,
                                  MobilekitError, ParityError, RuntimeCrashError, UnsupportedOpError)
    from mobilekit.estimation.api import LatencyEstimate, estimate, estimate_all
    from mobilekit.estimation.device_calibration import CalibrationResult, calibrate
    from mobilekit.build_config import load_build_config
    from mobilekit.build_result import BuildResult, HostLatency, PhoneEstimate
    from mobilekit.building import build
    from mobilekit.profiling.budget import Budget, BudgetCheck
    from mobilekit.adapters import export_adapters
    from mobilekit.exporting import export
    from mobilekit.plan import ExportPlan, plan_exports
    from mobilekit.sampling import Sampling, SamplingParity
    from mobilekit.zoo import ZOO, build_zoo_model
    from mobilekit.profiling.host import profile
    from mobilekit.profiling.report import LatencyReport
    from mobilekit.parity import Parity
    from mobilekit.module_parity import ModuleParity, ParityMap, parity_map
    from mobilekit.recipe import AdapterPolicy, Format, Precision, Recipe
    from mobilekit.runtime import run_artifact
    from mobilekit.spec import load_spec
    from mobilekit.targets import Target, get_target, list_targets


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mobilekit' has no attribute {name!r}") from None
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
