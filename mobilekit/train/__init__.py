"""mobilekit.train: make models smaller before export.

- Learnable depth pruning of diffusion transformers (TinyFusion) with baselines and
  masked knowledge distillation: ``prune_depth``, ``distill``.
- Efficient training of efficient image-to-image GANs (E²GAN): base training, LoRA
  adaptation with rank search and data subsets, diffusion-distilled pairs.

Names load lazily so that ``import mobilekit.train`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:attr"; each training method adds its public names here.
_LAZY: dict[str, str] = {
    # TinyFusion depth pruning (mobilekit.train.tinyfusion)
    "BlockStack": "mobilekit.train.tinyfusion.blocks:BlockStack",
    "DepthPruneConfig": "mobilekit.train.tinyfusion.config:DepthPruneConfig",
    "DistillConfig": "mobilekit.train.tinyfusion.config:DistillConfig",
    "DistillResult": "mobilekit.train.tinyfusion.distill:DistillResult",
    "GenericBlockStack": "mobilekit.train.tinyfusion.blocks:GenericBlockStack",
    "PruneResult": "mobilekit.train.tinyfusion.prune:PruneResult",
    "build_pruned": "mobilekit.train.tinyfusion.surgery:build_pruned",
    "distill": "mobilekit.train.tinyfusion.distill:distill",
    "prune_depth": "mobilekit.train.tinyfusion.prune:prune_depth",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mobilekit.train' has no attribute {name!r}") from None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
