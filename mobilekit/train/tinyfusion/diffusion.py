"""DDPM noise schedule, the training losses, and a DDIM sampler.

The linear beta schedule (1e-4 to 0.02 over 1000 steps) is DiT's. Models with a learned
variance output twice the input channels: epsilon, then ``v`` in [-1, 1], which interpolates
the log variance of ``p(x_{t-1} | x_t)`` between the posterior variance (``v = -1``) and
``beta_t`` (``v = 1``), as in improved DDPM and DiT.

Objectives (``objective``): ``"eps"`` is the epsilon MSE alone (the variance half is left
untrained, enough for the deterministic DDIM sampler); ``"eps+vlb"`` adds improved DDPM's
variational-bound term for the learned variance: per sample ``KL(q(x_{t-1}|x_t,x_0) ||
p(x_{t-1}|x_t))`` in bits per dimension (at ``t = 0`` the discretised-Gaussian decoder NLL),
computed with the predicted epsilon (hence the mean) detached, so it trains only the
variance channels, and added unweighted to the MSE (DiT's hybrid loss).
"""

from __future__ import annotations

from collections.abc import Callable

import math

import torch
import torch.nn.functional as F

OBJECTIVES = ("eps", "eps+vlb")


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
        # float64 terms of the true posterior q(x_{t-1} | x_t, x_0), for the variance losses
        acp = torch.cumprod(1.0 - betas, dim=0)
        acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        self.betas64 = betas
        self.acp64 = acp
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        # the posterior variance is 0 at t = 0: clip its log to the t = 1 value
        self.post_log_var64 = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if steps > 1 else torch.log(betas)
        self.post_coef_x0 = betas * acp_prev.sqrt() / (1.0 - acp)
        self.post_coef_xt = (1.0 - acp_prev) * (1.0 - betas).sqrt() / (1.0 - acp)

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


def learns_sigma(pred: torch.Tensor, channels: int) -> bool:
    """True when the prediction carries a learned-variance half (``2 * channels`` channels)."""
    return pred.shape[1] == 2 * channels


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def predicted_posterior(pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log variance of the model's ``p(x_{t-1} | x_t)`` from a learned-sigma prediction."""
    c = x_t.shape[1]
    eps, v = pred[:, :c], pred[:, c:]
    acp = _at(schedule.acp64, t, x_t)
    x0 = x_t / acp.sqrt() - (1.0 / acp - 1.0).sqrt() * eps
    mean = _at(schedule.post_coef_x0, t, x_t) * x0 + _at(schedule.post_coef_xt, t, x_t) * x_t
    lo, hi = _at(schedule.post_log_var64, t, x_t), _at(schedule.betas64.log(), t, x_t)
    frac = (v + 1) / 2
    return mean, frac * hi + (1 - frac) * lo


def gaussian_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Elementwise NLL (nats) of data ``x`` in [-1, 1] on 256 bins under ``N(mean, e^log_var)``."""
    inv_std = torch.exp(-0.5 * log_var)
    upper = _std_normal_cdf(inv_std * (x - mean + 1.0 / 255))
    lower = _std_normal_cdf(inv_std * (x - mean - 1.0 / 255))
    tiny = 1e-12
    log_p = torch.where(x < -0.999, torch.log(upper.clamp(min=tiny)),
                        torch.where(x > 0.999, torch.log((1.0 - lower).clamp(min=tiny)),
                                    torch.log((upper - lower).clamp(min=tiny))))
    return -log_p


def vlb_loss(pred: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
             *, reduce: bool = True) -> torch.Tensor:
    """improved DDPM's variational-bound term in bits/dim, epsilon detached (trains only ``v``).

    Raises:
        ValueError: ``pred`` has no learned-variance half.
    """
    c = x0.shape[1]
    if not learns_sigma(pred, c):
        raise ValueError(f"the VLB term needs a learned variance: prediction has {pred.shape[1]} channels, "
                         f"data {c}")
    frozen = torch.cat([pred[:, :c].detach(), pred[:, c:]], dim=1)
    mean, log_var = predicted_posterior(frozen, x_t, t, schedule)
    q_mean = _at(schedule.post_coef_x0, t, x_t) * x0 + _at(schedule.post_coef_xt, t, x_t) * x_t
    q_log_var = _at(schedule.post_log_var64, t, x_t)
    kl = gaussian_kl(q_mean, q_log_var, mean, log_var).flatten(1).mean(1) / math.log(2.0)
    nll = discretized_gaussian_nll(x0, mean, log_var).flatten(1).mean(1) / math.log(2.0)
    per = torch.where(t == 0, nll, kl)
    return per.mean() if reduce else per


def training_loss(pred: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                  schedule: NoiseSchedule, objective: str = "eps") -> torch.Tensor:
    """The loss of ``objective``: ``"eps"`` (:func:`diffusion_loss`) or ``"eps+vlb"`` (plus :func:`vlb_loss`)."""
    loss = diffusion_loss(pred, noise)
    if objective == "eps+vlb":
        loss = loss + vlb_loss(pred, x0, x_t, t, schedule)
    return loss


def variance_kd_loss(pred_s: torch.Tensor, pred_t: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     schedule: NoiseSchedule) -> torch.Tensor:
    """Variance distillation: ``KL(p_teacher(x_{t-1}|x_t) || p_student(x_{t-1}|x_t))`` in bits/dim.

    Both are Gaussians built from each model's epsilon and learned variance; the student's
    epsilon is detached (as in the VLB term), so this trains only the student's variance
    channels. Used at every ``t`` (at ``t = 0`` both decoders are Gaussians too).
    """
    c = x_t.shape[1]
    pred_t = pred_t.detach()
    frozen = torch.cat([pred_s[:, :c].detach(), pred_s[:, c:]], dim=1)
    mean_s, log_var_s = predicted_posterior(frozen, x_t, t, schedule)
    mean_t, log_var_t = predicted_posterior(pred_t, x_t, t, schedule)
    return (gaussian_kl(mean_t, log_var_t, mean_s, log_var_s).flatten(1).mean(1) / math.log(2.0)).mean()


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
