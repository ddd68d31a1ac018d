"""Helpers shared by search, baselines and recovery: seeded batches, calibration, EMA."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from mobilekit.train.tinyfusion.blocks import BlockStack
from mobilekit.train.tinyfusion.data import DataSource
from mobilekit.train.tinyfusion.diffusion import NoiseSchedule, diffusion_loss


def step_generator(seed: int, rank: int, step: int, salt: int = 0) -> torch.Generator:
    """A generator determined by (seed, rank, step): a resumed run draws the same batches."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step * 104_729 + salt) % (2**63 - 1))


@dataclass
class NoisyBatch:
    """One diffusion training batch."""

    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    cond: torch.Tensor | None

    def to(self, device: torch.device | str) -> NoisyBatch:
        """The batch on ``device`` (drawn on the CPU, so every device sees the same numbers)."""
        return replace(self, x0=self.x0.to(device), noise=self.noise.to(device), t=self.t.to(device),
                       x_t=self.x_t.to(device), cond=None if self.cond is None else self.cond.to(device))


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast on ``device`` for ``precision="bf16"``, else a no-op context."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (checkpoints load on any device)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def make_batch(data: DataSource, schedule: NoiseSchedule, batch_size: int, gen: torch.Generator, *,
               null_class: int | None, label_dropout: float) -> NoisyBatch:
    """Draw samples, timesteps, noise and dropped labels from ``gen``."""
    idx = torch.randint(0, len(data), (batch_size,), generator=gen)
    x0, labels = data.batch(idx)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, schedule.steps, (batch_size,), generator=gen)
    drop = torch.rand(batch_size, generator=gen) < label_dropout
    if labels is not None and null_class is not None and label_dropout > 0:
        labels = torch.where(drop, torch.full_like(labels, null_class), labels)
    if labels is None and null_class is not None:
        labels = torch.full((batch_size,), null_class, dtype=torch.long)
    return NoisyBatch(x0, noise, t, schedule.add_noise(x0, noise, t), labels)


def calibration_batches(data: DataSource, schedule: NoiseSchedule, n: int, seed: int, null_class: int | None,
                        batch_size: int = 32) -> list[NoisyBatch]:
    """A fixed calibration set (no label dropout), split into batches."""
    gen = torch.Generator().manual_seed(seed + 12_345)
    out, left = [], n
    while left > 0:
        b = min(batch_size, left)
        out.append(make_batch(data, schedule, b, gen, null_class=null_class, label_dropout=0.0))
        left -= b
    return out


@torch.no_grad()
def calibration_loss(model: nn.Module, stack: BlockStack, batches: list[NoisyBatch]) -> float:
    """Mean epsilon-MSE of ``model`` over the calibration batches."""
    total, count = 0.0, 0
    for b in batches:
        pred = stack.predict(model, b.x_t, b.t, b.cond)
        total += float(diffusion_loss(pred, b.noise)) * b.x0.shape[0]
        count += b.x0.shape[0]
    return total / max(count, 1)


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay with warm-up, so short runs still track: ``min(decay, (1 + s) / (10 + s))``."""
    return min(decay, (1.0 + step) / (10.0 + step))


def force_eval(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode: dropout off, no hidden label dropout (mobilekit drops labels itself)."""
    model.eval()
    return model
