"""Recipes: how to export for a target (format × delegate × precision × adapter policy).

A recipe's name is ``<format>[-<delegate>]-<precision>``, e.g. ``executorch-xnnpack-int8-dynamic``,
``coreml-fp16``, ``tflite-int8-static``. With a target it reads
``pixel-8/executorch-xnnpack-int8-dynamic``. Target-dependent settings (Core ML deployment
target and compute units) are part of the recipe, so two targets that need the same file
share one artifact and two that don't, don't.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from mobilekit.errors import ConfigError


class Format(str, Enum):
    """Artifact formats."""

    EXECUTORCH = "executorch"
    COREML = "coreml"
    TFLITE = "tflite"
    ONNX = "onnx"


class Precision(str, Enum):
    """Numeric precisions; int8 variants differ in what is quantized and when."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8_WEIGHT = "int8-weight"    # weights int8, activations float
    INT8_DYNAMIC = "int8-dynamic"  # weights int8, activations quantized at run time
    INT8_STATIC = "int8-static"    # weights and activations int8, calibrated ahead of time


class AdapterPolicy(str, Enum):
    """What happens to LoRA adapters: merged into the base, or kept as separate files."""

    FUSE = "fuse"
    SEPARATE = "separate"


FORMATS = tuple(f.value for f in Format)
PRECISIONS = tuple(p.value for p in Precision)
# Generic precisions resolved per format to the first variant its backend builds.
PRECISION_ALIASES: dict[str, tuple[str, ...]] = {"int8": ("int8-dynamic", "int8-weight", "int8-static")}
# Delegates that change the artifact itself. Other runtime choices (TFLite GPU delegate,
# Core ML compute units) are load-time options and recorded as recipe options.
DELEGATES: dict[str, tuple[str, ...]] = {"executorch": ("xnnpack", "coreml"), "coreml": (), "tflite": (), "onnx": ()}
FILE_SUFFIX = {"executorch": ".pte", "coreml": ".mlpackage", "tflite": ".tflite", "onnx": ".onnx"}


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    value = str(getattr(value, "value", value)).lower()
    if value not in allowed:
        near = difflib.get_close_matches(value, allowed, n=2)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise ConfigError(f"unknown {what} {value!r}", where=what,
                          fix=f"{hint}known: {', '.join(allowed)}")
    return value


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How to produce one artifact.

    Attributes:
        format: one of ``executorch``, ``coreml``, ``tflite``, ``onnx``.
        delegate: for ExecuTorch, ``xnnpack`` or ``coreml``; None for other formats.
        precision: one of ``fp32``, ``fp16``, ``int8-weight``, ``int8-dynamic``, ``int8-static``.
        adapter_policy: ``fuse`` or ``separate`` (LoRA adapters).
        deployment_target: Core ML minimum deployment target (e.g. ``iOS17``), Core ML only.
        compute_units: Core ML compute units (``ALL``, ``CPU_ONLY``, ``CPU_AND_NE``, ``CPU_AND_GPU``).
    """

    format: str
    delegate: str | None = None
    precision: str = "fp32"
    adapter_policy: str = "fuse"
    deployment_target: str | None = None
    compute_units: str | None = None
    version: int = field(default=1, compare=False)

    def __post_init__(self) -> None:
        fmt = _choice(self.format, FORMATS, "format")
        object.__setattr__(self, "format", fmt)
        object.__setattr__(self, "precision", _choice(self.precision, PRECISIONS, "precision"))
        object.__setattr__(self, "adapter_policy",
                           _choice(self.adapter_policy, tuple(a.value for a in AdapterPolicy), "adapter_policy"))
        delegates = DELEGATES[fmt]
        if self.delegate is None and delegates:
            object.__setattr__(self, "delegate", delegates[0])
        elif self.delegate is not None:
            if not delegates:
                raise ConfigError(f"format {fmt!r} takes no delegate, got {self.delegate!r}", where="delegate",
                                  fix="leave the delegate out (runtime delegates are chosen on the device)")
            object.__setattr__(self, "delegate", _choice(self.delegate, delegates, f"{fmt} delegate"))
        if fmt != "coreml" and not (fmt == "executorch" and self.delegate == "coreml"):
            object.__setattr__(self, "deployment_target", None)
            object.__setattr__(self, "compute_units", None)

    @property
    def name(self) -> str:
        """``<format>[-<delegate>]-<precision>``."""
        parts = [self.format] + ([self.delegate] if self.delegate else []) + [self.precision]
        return "-".join(parts)

    @property
    def suffix(self) -> str:
        """File suffix of the artifact (``.pte``, ``.mlpackage``, ``.tflite``, ``.onnx``)."""
        return FILE_SUFFIX[self.format]

    def with_(self, **changes: Any) -> Recipe:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (manifest, cache keys)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Inverse of ``to_dict``; unknown keys are rejected by name."""
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"unknown recipe key(s) {extra}", where="recipe", fix=f"known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def parse(cls, name: str, **options: Any) -> Recipe:
        """Parse ``<format>[-<delegate>]-<precision>`` (a ``target/`` prefix is ignored).

        Example:
            >>> Recipe.parse("executorch-xnnpack-int8-dynamic").precision
            'int8-dynamic'
        """
        text = name.split("/")[-1].strip().lower()
        fmt, _, rest = text.partition("-")
        fmt = _choice(fmt, FORMATS, "format")
        delegate = None
        for d in DELEGATES[fmt]:
            if rest.startswith(d + "-"):
                delegate, rest = d, rest[len(d) + 1:]
                break
        if not rest:
            raise ConfigError(f"recipe {name!r} names no precision", where="recipe",
                              fix="write <format>[-<delegate>]-<precision>, e.g. executorch-xnnpack-fp32")
        return cls(format=fmt, delegate=delegate, precision=rest, **options)


def recipe_for_target(target: Any, *, format: str | None = None, precision: str | None = None,
                      delegate: str | None = None, adapter_policy: str = "fuse") -> Recipe:
    """Pick the recipe for ``target``: its default, or the first of its recipes matching the given parts.

    Args:
        target: a ``mobilekit.targets.Target``.
        format: wanted format, or None for the target's default.
        precision: wanted precision, or None for the matching recipe's own.
        delegate: wanted ExecuTorch delegate, or None.
        adapter_policy: ``fuse`` or ``separate``.
    """
    if format is not None:
        format = _choice(format, FORMATS, "format")
        if format not in target.formats:
            raise ConfigError(f"target {target.name} does not run format {format!r}", where="format",
                              fix=f"formats for {target.name}: {', '.join(target.formats)}")
    candidates = [Recipe.parse(r) for r in (target.default_recipe, *target.recipes)]
    chosen = next((r for r in candidates if (format is None or r.format == format)
                   and (delegate is None or r.delegate == delegate)), None)
    if chosen is None:
        chosen = Recipe(format=format or candidates[0].format, delegate=delegate)
    changes: dict[str, Any] = {"adapter_policy": adapter_policy}
    if precision is not None:
        changes["precision"] = precision
    if delegate is not None:
        changes["delegate"] = delegate
    if chosen.format == "coreml" or chosen.delegate == "coreml":
        changes["deployment_target"] = getattr(target, "coreml_deployment_target", None) or "iOS17"
        changes["compute_units"] = "ALL"
    return Recipe(**{**chosen.to_dict(), **changes})
