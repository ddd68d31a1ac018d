"""The E²GAN training loop shared by base training and adaptation.

pix2pix-style objective: the generator minimises ``λ_L1·L1(G(x, e), y)`` plus, when
``adversarial``, an LSGAN term against a conditional PatchGAN; the discriminator
minimises the LSGAN loss on real (x, y) and generated (x, G(x, e)) pairs.

One CPU process, or several under torchrun through ``mobilekit.train.distributed``
(each rank draws its own batch; DDP averages gradients). Checkpoints go through
``mobilekit.train.checkpoint`` every ``checkpoint_every`` optimizer steps, and a run
restarted with the same ``run_dir`` resumes from the newest one; batches are drawn from a
per-step seed, so a resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit.errors import ConfigError
from mobilekit.train import checkpoint as ckpt
from mobilekit.train import distributed as dist

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
EvalFn = Callable[["Conditioned", int, float], dict[str, float]]


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Optimisation settings.

    Attributes:
        steps: optimizer steps.
        batch_size: pairs per step and process.
        lr: generator (and embedding) Adam learning rate.
        lr_disc: discriminator learning rate.
        lambda_l1: weight of the L1 term (pix2pix uses 100 with a weight-1 adversarial term).
        adversarial: train against the PatchGAN discriminator.
        seed: run seed (initialisation, batch draws).
        checkpoint_every: optimizer steps between checkpoints (0: none).
        eval_every: optimizer steps between evaluation calls (0: none).
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    lr_disc: float = 2e-4
    lambda_l1: float = 100.0
    adversarial: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}", where=f"LoopConfig.{name}")
        for name in ("checkpoint_every", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be ≥ 0, got {v!r}", where=f"LoopConfig.{name}")
        for name in ("lr", "lr_disc", "lambda_l1"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0", where=f"LoopConfig.{name}")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a dict."""
        return asdict(self)


class Conditioned(nn.Module):
    """A generator plus its concept embedding table: forward(sources, concept indices)."""

    def __init__(self, generator: nn.Module, embeddings: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.embeddings = embeddings

    def forward(self, sources: torch.Tensor, concept_idx: torch.Tensor) -> torch.Tensor:
        return self.generator(sources, self.embeddings(concept_idx))


@dataclass
class TrainData:
    """Pairs in memory: sources/targets [N, 3, H, W] in [-1, 1] and each pair's concept index."""

    sources: torch.Tensor
    targets: torch.Tensor
    concept_idx: torch.Tensor

    def __post_init__(self) -> None:
        if self.sources.shape != self.targets.shape:
            raise ConfigError(f"sources {tuple(self.sources.shape)} and targets {tuple(self.targets.shape)} differ",
                              where="TrainData")
        if self.sources.shape[0] == 0:
            raise ConfigError("no training pairs", where="TrainData", fix="give at least one pair")
        if self.sources.shape[-1] % 8 or self.sources.shape[-2] % 8:
            raise ConfigError(f"image size {tuple(self.sources.shape[-2:])} must be divisible by 8",
                              where="TrainData", fix="use a size such as 64 or 256")


def fit(model: Conditioned, data: TrainData, config: LoopConfig, *, run_dir: Path | None = None,
        discriminator: nn.Module | None = None, on_progress: ProgressFn | None = None,
        eval_fn: EvalFn | None = None) -> dict[str, Any]:
    """Train the trainable parameters of ``model`` (in place) on ``data``.

    Args:
        model: generator + embeddings; parameters with ``requires_grad`` are optimised.
        data: the pairs.
        config: optimisation settings.
        run_dir: where checkpoints go (None: no checkpoints, no resume).
        discriminator: the PatchGAN (required when ``config.adversarial``).
        on_progress: ``on_progress("train", step, steps)`` after each step.
        eval_fn: called as ``eval_fn(model, step, train_seconds)`` (no grad, eval mode) every
            ``eval_every`` steps and at the end (on rank 0); its dicts form the returned history.

    Returns:
        ``{"history": [...], "train_seconds": float, "steps": int, "resumed_from": int}``;
        ``train_seconds`` is wall-clock time in optimizer steps, excluding evaluation.
    """
    if config.adversarial and discriminator is None:
        raise ConfigError("adversarial training needs a discriminator", where="fit(discriminator)")
    ctx = dist.init_distributed("cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters", where="fit(model)")
    opt_g = torch.optim.Adam(params, lr=config.lr, betas=(0.5, 0.999))
    opt_d = (torch.optim.Adam(discriminator.parameters(), lr=config.lr_disc, betas=(0.5, 0.999))
             if config.adversarial and discriminator is not None else None)
    start, train_seconds, history = 0, 0.0, []
    if run_dir is not None:
        state = ckpt.load_latest(run_dir)
        if state is not None:
            model.load_state_dict(state["model"])
            opt_g.load_state_dict(state["opt_g"])
            if opt_d is not None and discriminator is not None and "disc" in state:
                discriminator.load_state_dict(state["disc"])
                opt_d.load_state_dict(state["opt_d"])
            start, train_seconds = int(state["step"]), float(state["train_seconds"])
            history = list(state.get("history", []))
            ckpt.set_rng_state(state["rng"])
            logger.info("resumed from step %d in %s", start, run_dir)
    resumed_from = start
    g_model = dist.wrap_model(model, ctx)
    d_model = dist.wrap_model(discriminator, ctx) if opt_d is not None and discriminator is not None else None
    model.train()
    n = data.sources.shape[0]
    for step in range(start, config.steps):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(dist.rank_seed(config.seed * 1_000_003 + step, ctx))
        idx = torch.randint(0, n, (config.batch_size,), generator=gen)
        src, tgt, cidx = data.sources[idx], data.targets[idx], data.concept_idx[idx]
        fake = g_model(src, cidx)
        if d_model is not None and opt_d is not None:
            opt_d.zero_grad(set_to_none=True)
            d_real = d_model(src, tgt)
            d_fake = d_model(src, fake.detach())
            loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
            loss_d.backward()
            opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        loss_l1 = F.l1_loss(fake, tgt)
        loss_g = config.lambda_l1 * loss_l1
        if d_model is not None:
            for p in d_model.parameters():
                p.requires_grad_(False)
            d_out = d_model(src, fake)
            loss_g = loss_g + F.mse_loss(d_out, torch.ones_like(d_out))
            for p in d_model.parameters():
                p.requires_grad_(True)
        loss_g.backward()
        opt_g.step()
        train_seconds += time.perf_counter() - t0
        done = step + 1
        if on_progress is not None:
            on_progress("train", done, config.steps)
        if eval_fn is not None and ctx.is_main and (
                (config.eval_every and done % config.eval_every == 0) or done == config.steps):
            model.eval()
            with torch.no_grad():
                rec = {"step": done, "train_seconds": round(train_seconds, 3),
                       "loss_l1": float(loss_l1.detach()), **eval_fn(model, done, train_seconds)}
            model.train()
            history.append(rec)
        if run_dir is not None and ctx.is_main and config.checkpoint_every and (
                done % config.checkpoint_every == 0 or done == config.steps):
            state = {"model": {k: v for k, v in model.state_dict().items()}, "opt_g": opt_g.state_dict(),
                     "train_seconds": train_seconds, "history": history, "rng": ckpt.rng_state()}
            if opt_d is not None and discriminator is not None:
                state["disc"] = discriminator.state_dict()
                state["opt_d"] = opt_d.state_dict()
            ckpt.save_checkpoint(run_dir, done, state)
        if ctx.distributed and config.checkpoint_every and done % config.checkpoint_every == 0:
            dist.barrier(ctx)
    model.eval()
    return {"history": history, "train_seconds": train_seconds, "steps": config.steps,
            "resumed_from": resumed_from, "world_size": ctx.world_size}
