"""Backends that turn a PyTorch model into one artifact format each.

A fixed table maps format names to converter classes, imported on first use; nothing
registers itself as a side effect of being imported.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from mobilekit.errors import ConfigError

if TYPE_CHECKING:
    from mobilekit.converters.base import Converter

REGISTRY: dict[str, str] = {
    "executorch": "mobilekit.converters.executorch:ExecuTorchConverter",
    "coreml": "mobilekit.converters.coreml:CoreMLConverter",
    "tflite": "mobilekit.converters.tflite:TFLiteConverter",
    "onnx": "mobilekit.converters.onnx:OnnxConverter",
}


def get_converter(fmt: str) -> Converter:
    """The converter for format ``fmt`` (``executorch``, ``coreml``, ``tflite``, ``onnx``)."""
    key = fmt.lower()
    if key not in REGISTRY:
        near = difflib.get_close_matches(key, REGISTRY, n=1)
        raise ConfigError(f"unknown format {fmt!r}", where="format",
                          fix=(f"did you mean {near[0]}? " if near else "") + f"known: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), cls)()
