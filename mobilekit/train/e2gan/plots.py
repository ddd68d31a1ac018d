"""PNG grids of source | target | output rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mobilekit._io import atomic_path
from mobilekit.errors import ConfigError

logger = logging.getLogger(__name__)


def grid_array(*columns: torch.Tensor, pad: int = 2) -> np.ndarray:
    """Tile image batches [N, 3, H, W] in [-1, 1] as columns; return uint8 HWC."""
    if not columns:
        raise ConfigError("no images to plot", where="grid_array")
    shape = columns[0].shape
    for c in columns:
        if c.shape != shape or c.ndim != 4:
            raise ConfigError(f"all columns must share one [N, 3, H, W] shape; got {tuple(c.shape)} vs {tuple(shape)}",
                              where="grid_array")
    n, _, h, w = shape
    k = len(columns)
    canvas = np.full((n * (h + pad) + pad, k * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for j, col in enumerate(columns):
        imgs = ((col.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = imgs[i]
    return canvas


def save_grid(path: Path, sources: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor) -> Path:
    """Write a PNG with one row per pair: source | target | output (atomic)."""
    from PIL import Image

    arr = grid_array(sources, targets, outputs)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
