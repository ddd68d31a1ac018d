"""DDPM noise schedule, the epsilon-prediction training loss, and a DDIM sampler.

The linear beta schedule (1e-4 to 0.02 over 1000 steps) is DiT's. Models with a learned
variance (twice the input channels out) are trained on their first half (epsilon); the
variance half is left untrained, which is enough for the deterministic DDIM sampler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class NoiseSchedule:
    """A discrete DDPM schedule.

    Args:
        steps: number of diffusion timesteps.
        beta_start: first beta.
        beta_end: last beta.
    """

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.steps = steps
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``."""
        a = self.alphas_cumprod.to(x0.device)[t].reshape(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


def epsilon(pred: torch.Tensor, channels: int) -> torch.Tensor:
    """The epsilon part of a prediction (first ``channels`` channels)."""
    return pred[:, :channels] if pred.shape[1] != channels else pred


def diffusion_loss(pred: torch.Tensor, noise: torch.Tensor, *, reduce: bool = True) -> torch.Tensor:
    """Epsilon MSE; per sample when ``reduce`` is False."""
    eps = epsilon(pred, noise.shape[1])
    per = F.mse_loss(eps, noise, reduction="none").flatten(1).mean(1)
    return per.mean() if reduce else per


@torch.no_grad()
def ddim_sample(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
                schedule: NoiseSchedule, *, steps: int = 25, generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate samples with deterministic DDIM (eta 0).

    Args:
        predict: ``(x_t, t) -> prediction`` (conditioning already bound).
        shape: output shape ``[B, C, H, W]``.
        schedule: the training schedule.
        steps: number of sampling steps.
        generator: source of the initial noise.

    Returns:
        The generated ``x_0``, clamped to [-1, 1].
    """
    x = torch.randn(shape, generator=generator)
    ts = torch.linspace(schedule.steps - 1, 0, steps).round().long()
    ac = schedule.alphas_cumprod
    for i, t in enumerate(ts.tolist()):
        a_t = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        eps = epsilon(predict(x, torch.full((shape[0],), t, dtype=torch.long)), shape[1])
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.clamp(-1, 1)
