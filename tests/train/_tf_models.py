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
