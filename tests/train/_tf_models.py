"""Tiny models for the TinyFusion tests (built from configs, seeded, nothing downloaded)."""

from __future__ import annotations

import torch
from torch import nn

from mobilekit.train.tinyfusion.blocks import GenericBlockStack


def tiny_dit(num_layers: int = 4, seed: int = 0) -> nn.Module:
    """A diffusers DiT: hidden 16, 8x8x4 inputs, 10 classes."""
    from tests.fixtures.models import tiny_dit as fixture

    return fixture(num_layers=num_layers, seed=seed)


def tiny_pixart(num_layers: int = 4, seed: int = 0) -> nn.Module:
    """A diffusers PixArt: hidden 16, 8x8x4 inputs, 16-dim captions."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=num_layers, cross_attention_dim=16, caption_channels=16,
                                    sample_size=8, patch_size=2, norm_num_groups=1,
                                    use_additional_conditions=False).eval()


class ScaledResidualStack(nn.Module):
    """Blocks ``x + a_j * tanh(W_j x)`` with known scales ``a_j``; prediction = head(last hidden)."""

    def __init__(self, scales: list[float], dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([_Scaled(dim, a) for a in scales])
        self.inp = nn.Linear(4, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hdn = self.inp(x.flatten(2).transpose(1, 2))
        for blk in self.blocks:
            hdn = blk(hdn)
        return self.head(hdn).transpose(1, 2).reshape(b, c, h, w)


class _Scaled(nn.Module):
    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * torch.tanh(self.lin(x))


def scaled_stack_adapter() -> GenericBlockStack:
    """The adapter for :class:`ScaledResidualStack`: blocks in ``blocks``, unconditional 4x4x4 inputs."""
    return GenericBlockStack(blocks_attr="blocks", predict_fn=lambda m, x, t, y: m(x), sample_shape=(4, 4, 4),
                             depth_key="depth", name="scaled")


def tiny_dit_sigma(num_layers: int = 4, seed: int = 0) -> nn.Module:
    """A diffusers DiT that learns sigma (8 output channels for 4 input), 8x8 inputs, 10 classes.

    Block 0's embedder (the one diffusers conditions the output head with) is made distinctive:
    its timestep MLP and label table are scaled, so a head conditioned by any other block's
    embedder gives a visibly different output.
    """
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                  num_layers=num_layers, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                  norm_type="ada_norm_zero")
    # diffusers zero-inits the adaLN modulation and the output layers: give them weights so
    # every path (block modulations, the head's shift/scale) carries signal
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm1.linear" in name or "proj_out" in name:
                p.normal_(0, 0.05)
        emb0 = model.transformer_blocks[0].norm1.emb
        emb0.timestep_embedder.linear_2.weight.mul_(4.0)
        emb0.class_embedder.embedding_table.weight.mul_(4.0).add_(0.5)
    return model.eval()


class HeadReadsFirstBlock(nn.Module):
    """A generic stack whose head is conditioned by ``blocks[0].emb`` (the DiT head's pattern)."""

    def __init__(self, depth: int = 4, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(4, dim)
        self.blocks = nn.ModuleList([_EmbBlock(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tt = (t.float() / 1000.0).reshape(-1, 1)
        hdn = self.inp(x.flatten(2).transpose(1, 2))
        for blk in self.blocks:
            hdn = blk(hdn, tt)
        cond = self.blocks[0].emb(tt)  # read from outside the blocks
        return (self.head(hdn) * (1 + cond[:, None, :4])).transpose(1, 2).reshape(b, c, h, w)


class _EmbBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.emb = nn.Linear(1, dim)
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(x) + self.emb(tt)[:, None, :])


def head_reads_adapter(declare: bool = True) -> GenericBlockStack:
    """The adapter for :class:`HeadReadsFirstBlock` (declaring its outside read of ``emb`` or not)."""
    return GenericBlockStack(blocks_attr="blocks", predict_fn=lambda m, x, t, y: m(x, t), sample_shape=(4, 4, 4),
                             depth_key="depth", name="head-reads", outside_reads=("emb",) if declare else ())


class StopTraining(Exception):
    """Raised by ``stop_at`` to interrupt a run the way a killed process would (for resume tests)."""


def stop_at(k: int):  # noqa: ANN201
    """An ``on_progress`` callback that raises ``StopTraining`` once ``done`` reaches ``k``."""
    def cb(stage: str, done: int, total: int) -> None:
        if done == k:
            raise StopTraining
    return cb
