"""Image parity: an image-to-image model judged on the images a user sees, not on raw floats.

A GAN's output is shown as an 8-bit picture. Float parity (cosine, PSNR against the reference's
own range) can pass while the picture shifts by several levels, or fail on differences that
round away. ``compare_images`` maps the artifact's and PyTorch's output to 8-bit images over the
output's declared value range (e.g. ``[-1, 1]`` for a tanh head) and compares those: PSNR with a
peak of 255, the largest difference in levels, and the share of values more than one level off.
It reuses the outputs of the parity run (no extra runtime pass).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobilekit.errors import ConfigError
from mobilekit.parity import IMAGE_TOLERANCES

__all__ = ["IMAGE_TOLERANCES", "ImageOutput", "ImageParity", "compare_images", "image_tolerance_for", "to_uint8"]


@dataclass(frozen=True, kw_only=True)
class ImageOutput:
    """Which of a model's outputs is an image, and the value range that maps to 0–255.

    Attributes:
        output: index of the image among the model's outputs.
        low: the value shown as black (0).
        high: the value shown as white (255).
    """

    output: int = 0
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.output, int) or self.output < 0:
            raise ConfigError(f"image output index must be an integer >= 0, got {self.output!r}",
                              where="image_output.output")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high <= self.low:
            raise ConfigError(f"image value range [{self.low}, {self.high}] is empty or not finite",
                              where="image_output.range", fix="give [low, high] with low < high, e.g. [-1, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and cache keys."""
        return asdict(self)

    @classmethod
    def parse(cls, value: Any, where: str = "image_output") -> ImageOutput:
        """From ``true`` ([-1, 1], output 0), ``[low, high]``, ``"low,high"`` or ``{output, range}``."""
        try:
            if value is True:
                return cls()
            if isinstance(value, str):
                value = [float(v) for v in value.split(",")]
            if isinstance(value, (list, tuple)) and len(value) == 2:
                return cls(low=float(value[0]), high=float(value[1]))
            if isinstance(value, Mapping) and set(value) <= {"output", "range"}:
                low, high = value.get("range", (-1.0, 1.0))
                return cls(output=int(value.get("output", 0)), low=float(low), high=float(high))
        except ConfigError:
            raise
        except (TypeError, ValueError):
            pass
        raise ConfigError(f"cannot read image output {value!r}", where=where,
                          fix="write true, [low, high] (e.g. [-1, 1]), or {output = 0, range = [0, 1]}")


@dataclass(frozen=True, kw_only=True)
class ImageParity:
    """Agreement of an artifact's output images with PyTorch's, as 8-bit pictures (worst input counts).

    Attributes:
        status: ``pass``, ``fail`` or ``not-run``.
        psnr_db: PSNR of the 8-bit images (peak 255), lowest over the inputs; 999 when identical.
        max_level_diff: largest difference of one value, in 8-bit levels.
        levels_off_pct: share of values more than one level off, percent, over all inputs.
        inputs: how many inputs were compared.
        worst_input: the input with the lowest PSNR.
        output, low, high: the image output and its value range.
        tolerance: the floor applied (``psnr_db``).
        reason: why it was not run, or what failed.
    """

    status: str
    psnr_db: float | None = None
    max_level_diff: int | None = None
    levels_off_pct: float | None = None
    inputs: int = 0
    worst_input: int | None = None
    output: int = 0
    low: float = -1.0
    high: float = 1.0
    tolerance: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def image_tolerance_for(precision: str, overrides: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """The 8-bit image PSNR floor of ``precision`` (``overrides[precision]["image_psnr_db"]`` wins)."""
    tol = dict(IMAGE_TOLERANCES[precision])
    if overrides and "image_psnr_db" in overrides.get(precision, {}):
        tol["psnr_db"] = float(overrides[precision]["image_psnr_db"])
    return tol


def to_uint8(x: np.ndarray, image: ImageOutput) -> np.ndarray:
    """Values in ``[image.low, image.high]`` as 8-bit levels (rounded, clipped), as a picture is saved."""
    scaled = (np.asarray(x, dtype=np.float64) - image.low) / (image.high - image.low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def compare_images(references: Sequence[Sequence[np.ndarray]], actuals: Sequence[Sequence[np.ndarray]], *,
                   image: ImageOutput, tolerance: Mapping[str, float]) -> ImageParity:
    """Compare the image output of every parity input as 8-bit pictures.

    Args:
        references: PyTorch's outputs, one list per input.
        actuals: the artifact's outputs, in the same order.
        image: which output is the image and its value range.
        tolerance: the floor ``psnr_db``.
    """
    base = {"output": image.output, "low": image.low, "high": image.high, "tolerance": dict(tolerance),
            "inputs": len(references)}
    if image.output >= min((len(r) for r in references), default=0):
        return ImageParity(status="fail", **base,
                           reason=f"the model has no output {image.output} to read as an image")
    psnrs, max_diff, off, count = [], 0, 0, 0
    for ref, act in zip(references, actuals, strict=True):
        r = to_uint8(ref[image.output], image).astype(np.int16)
        a = to_uint8(np.asarray(act[image.output]).reshape(r.shape), image).astype(np.int16)
        d = np.abs(r - a)
        mse = float(np.mean(d.astype(np.float64) ** 2))
        psnrs.append(999.0 if mse == 0 else min(999.0, 10 * math.log10(255.0**2 / mse)))
        max_diff = max(max_diff, int(d.max(initial=0)))
        off += int((d > 1).sum())
        count += d.size
    worst = int(np.argmin(psnrs))
    psnr = psnrs[worst]
    ok = psnr >= tolerance["psnr_db"]
    return ImageParity(status="pass" if ok else "fail", psnr_db=psnr, max_level_diff=max_diff,
                       levels_off_pct=100.0 * off / max(count, 1), worst_input=worst, **base,
                       reason=None if ok else f"8-bit image PSNR {psnr:.1f} dB on input {worst} "
                                              f"(floor {tolerance['psnr_db']})")
