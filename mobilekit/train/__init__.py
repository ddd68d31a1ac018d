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
    # E²GAN (mobilekit.train.e2gan)
    "AdaptConfig": "mobilekit.train.e2gan.train:AdaptConfig",
    "AdaptResult": "mobilekit.train.e2gan.adapt:AdaptResult",
    "Adapter": "mobilekit.train.e2gan.lora:Adapter",
    "BaseTrainConfig": "mobilekit.train.e2gan.train:BaseTrainConfig",
    "CLIPTextEncoder": "mobilekit.train.e2gan.concepts:CLIPTextEncoder",
    "ConceptEmbeddings": "mobilekit.train.e2gan.concepts:ConceptEmbeddings",
    "DistillDataConfig": "mobilekit.train.e2gan.distill_data:DistillDataConfig",
    "E2GANConfig": "mobilekit.train.e2gan.models:E2GANConfig",
    "E2GANGenerator": "mobilekit.train.e2gan.models:E2GANGenerator",
    "GANLoopConfig": "mobilekit.train.e2gan.loop:LoopConfig",
    "LoRAConfig": "mobilekit.train.e2gan.lora:LoRAConfig",
    "PairDataset": "mobilekit.train.e2gan.pairs:PairDataset",
    "PatchDiscriminator": "mobilekit.train.e2gan.models:PatchDiscriminator",
    "PatchDiscriminatorConfig": "mobilekit.train.e2gan.models:PatchDiscriminatorConfig",
    "RankSearchConfig": "mobilekit.train.e2gan.rank_search:RankSearchConfig",
    "adapt": "mobilekit.train.e2gan.adapt:adapt",
    "apply_adapter": "mobilekit.train.e2gan.lora:apply_adapter",
    "builtin_concepts": "mobilekit.train.e2gan.concepts:builtin_concepts",
    "distill_pairs": "mobilekit.train.e2gan.distill_data:distill_pairs",
    "fuse_adapter": "mobilekit.train.e2gan.lora:fuse_adapter",
    "load_adapted": "mobilekit.train.e2gan.adapt:load_adapted",
    "load_adapter": "mobilekit.train.e2gan.lora:load_adapter",
    "load_base": "mobilekit.train.e2gan.train:load_base",
    "load_instruct_pix2pix": "mobilekit.train.e2gan.distill_data:load_instruct_pix2pix",
    "random_ranks": "mobilekit.train.e2gan.rank_search:random_ranks",
    "random_subset": "mobilekit.train.e2gan.subset:random_subset",
    "search_ranks": "mobilekit.train.e2gan.rank_search:search_ranks",
    "select_subset": "mobilekit.train.e2gan.subset:select_subset",
    "train_base": "mobilekit.train.e2gan.train:train_base",
    "uniform_ranks": "mobilekit.train.e2gan.rank_search:uniform_ranks",
    "write_pair": "mobilekit.train.e2gan.pairs:write_pair",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mobilekit.train' has no attribute {name!r}") from None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
