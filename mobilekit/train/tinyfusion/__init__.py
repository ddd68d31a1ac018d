"""TinyFusion: learnable depth pruning of diffusion transformers, its baselines, and masked-KD recovery.

Lifecycle: ``prune_depth`` (attach gates and ΔΦ to a copy, search, decide, build the plain
shallower model from the original weights) then ``distill`` (recover it).
"""

from mobilekit.train.tinyfusion.blocks import BlockStack, DiTStack, GenericBlockStack, PixArtStack, resolve_stack
from mobilekit.train.tinyfusion.config import DepthPruneConfig, DistillConfig
from mobilekit.train.tinyfusion.data import DataSource, load_data
from mobilekit.train.tinyfusion.distill import DistillResult, distill
from mobilekit.train.tinyfusion.prune import PruneResult, prune_depth
from mobilekit.train.tinyfusion.surgery import build_pruned

__all__ = ["BlockStack", "DataSource", "DepthPruneConfig", "DiTStack", "DistillConfig", "DistillResult",
           "GenericBlockStack", "PixArtStack", "PruneResult", "build_pruned", "distill", "load_data",
           "prune_depth", "resolve_stack"]
