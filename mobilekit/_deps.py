"""Optional heavy dependencies: import on demand, read versions without importing."""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from mobilekit.errors import BackendUnavailableError

# Distribution names whose versions every Artifact and run record carries.
TOOLCHAIN = ("torch", "executorch", "coremltools", "litert-torch", "ai-edge-litert", "ai-edge-quantizer",
             "onnx", "onnxruntime", "torchao", "peft", "diffusers", "mobilekit")


def version_of(dist: str) -> str | None:
    """Return the installed version of distribution ``dist``, or None, without importing it."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def toolchain_versions() -> dict[str, str | None]:
    """Return the versions of every toolchain package (None when not installed)."""
    return {name: version_of(name) for name in TOOLCHAIN}


def require(module: str, *, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise BackendUnavailableError naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f"{module} is needed{(' ' + purpose) if purpose else ''} but cannot be imported: {exc}"
        raise BackendUnavailableError(what, fix=f"install it with: pip install 'mobilekit[{extra}]'") from exc
