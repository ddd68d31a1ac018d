"""Model surgery: the plain, shallower model of the same class from the original weights."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from mobilekit._io import atomic_path, write_json_atomic
from mobilekit.errors import ConfigError
from mobilekit.train.tinyfusion.blocks import BlockStack, GatedBlock

logger = logging.getLogger(__name__)


def build_pruned(model: nn.Module, kept: Sequence[int], stack: BlockStack) -> nn.Module:
    """Return a copy of ``model`` keeping only the blocks ``kept`` (in order); ``model`` is unchanged.

    The copy is the same class with the same weights for every kept part and its config
    records the new depth, so ``save_pretrained``/``from_pretrained`` round-trip it.

    Raises:
        ConfigError: ``kept`` is empty, unsorted or out of range.

    Example:
        >>> small = build_pruned(dit, [0, 3, 5], DiTStack())
    """
    blocks = stack.blocks(model)
    depth = len(blocks)
    kept = list(kept)
    if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= depth:
        raise ConfigError(f"kept blocks {kept} must be sorted, distinct and within 0..{depth - 1}", where="kept",
                          fix="pass the indices a pruning method returned")
    if any(isinstance(b, GatedBlock) for b in blocks):
        raise ConfigError("cannot build a pruned model from a gated model", where="model",
                          fix="pass the original, unwrapped model")
    clone = copy.deepcopy(model)
    old = stack.blocks(clone)
    stack.set_blocks(clone, nn.ModuleList([old[i] for i in kept]))
    return clone


def save_pruned(model: nn.Module, out_dir: Path, record: dict[str, Any]) -> tuple[Path, Path]:
    """Save ``model`` with ``save_pretrained`` (safetensors + config) into ``out_dir/model`` and
    ``record`` as ``out_dir/prune.json``, both atomically. Returns the two paths."""
    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(f"{type(model).__name__} has no save_pretrained", where="model",
                          fix="save the returned model yourself (e.g. safetensors.torch.save_model)")
    with atomic_path(model_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
    rec_path = write_json_atomic(out_dir / "prune.json", record)
    return model_dir, rec_path
