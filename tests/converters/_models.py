"""Small models the converter tests share."""

from __future__ import annotations

import torch


class ConvStack(torch.nn.Module):
    """Eleven convolutions in a ModuleList: ``blocks.1`` must not select ``blocks.10`` (a prefix of
    its name), and the ModuleList, never called, has no level in litert-torch's tensor names."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(11))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks:
            x = torch.relu(conv(x))
        return x
