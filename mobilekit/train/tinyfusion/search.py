"""Learnable depth pruning (TinyFusion): gates over N:M local masks, co-trained with a recoverability ΔΦ.

Each step draws one local mask per group *per sample* with hard Gumbel-softmax (straight-
through gradients), runs every block mixed as ``m * block(x) + (1 - m) * x``, and minimises
the diffusion loss jointly over the gate logits and a ΔΦ shared by all sampled sub-networks
(LoRA on every linear layer, the full weights, or nothing). An EMA of the gate logits decides.
ΔΦ is thrown away afterwards: the pruned model is built from the original weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilekit.errors import ConfigError
from mobilekit.train import checkpoint as ckpt
from mobilekit.train import distributed as dist
from mobilekit.train.tinyfusion import masks as mk
from mobilekit.train.tinyfusion._common import autocast, ema_decay_at, force_eval, make_batch, step_generator, to_cpu
from mobilekit.train.tinyfusion.blocks import BlockStack, GateState, gated_copy
from mobilekit.train.tinyfusion.config import DepthPruneConfig, check_resume_objective, objective_of
from mobilekit.train.tinyfusion.data import DataSource
from mobilekit.train.tinyfusion.diffusion import NoiseSchedule, learns_sigma, training_loss

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


class GateSearchModule(nn.Module):
    """The model under search: gated blocks, ΔΦ, and one gate-logit row per group."""

    def __init__(self, model: nn.Module, stack: BlockStack, state: GateState, pattern: mk.Pattern,
                 gate_init: float, protect: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_stack", stack)
        object.__setattr__(self, "_state", state)
        self.pattern = pattern
        opts = [protected_candidates(n, m, rng, protect) for (n, m), rng in zip(pattern, mk.group_ranges(pattern),
                                                                             strict=True)]
        for i, o in enumerate(opts):
            self.register_buffer(f"options_{i}", o, persistent=False)
        self.gates = nn.ParameterList([nn.Parameter(torch.full((o.shape[0],), float(gate_init))) for o in opts])

    @property
    def options(self) -> list[torch.Tensor]:
        """Candidate masks ``[C_g, M_g]`` per group."""
        return [getattr(self, f"options_{i}") for i in range(len(self.gates))]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, gumbel: list[torch.Tensor],
                tau: float, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample per-sample masks and predict; returns ``(prediction, masks [B, L])``."""
        masks = mk.sample_layer_masks(list(self.gates), self.options, gumbel, tau, scaling)
        self._state.masks = masks
        try:
            pred = self._stack.predict(self.model, x_t, t, cond)
        finally:
            self._state.masks = None
        return pred, masks


def protected_candidates(n: int, m: int, rng: range, protect: tuple[int, ...]) -> torch.Tensor:
    """The group's candidate masks that keep every protected block of ``rng``.

    Raises:
        ConfigError: the group must keep more protected blocks than its N.
    """
    opts = mk.candidate_masks(n, m)
    local = [i - rng.start for i in protect if i in rng]
    if not local:
        return opts
    if len(local) > n:
        raise ConfigError(f"group {list(rng)} keeps {n} blocks but {len(local)} are protected", where="protect",
                          fix="protect at most N blocks per group")
    return opts[opts[:, local].sum(dim=1) == len(local)]


def _linear_names(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if suffixes:
        names = [n for n in names if any(n == s or n.endswith("." + s) for s in suffixes)]
    if not names:
        raise ConfigError("no linear layers to adapt with LoRA", where="lora_targets",
                          fix="leave lora_targets empty (every nn.Linear) or name existing layers")
    return names


def attach_delta(model: nn.Module, config: DepthPruneConfig) -> list[nn.Parameter]:
    """Freeze ``model`` and add the recoverability ΔΦ in place; return its trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    if config.delta == "frozen":
        return []
    if config.delta == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())
    from peft import LoraConfig, inject_adapter_in_model

    targets = _linear_names(model, config.lora_targets)
    alpha = config.lora_alpha if config.lora_alpha is not None else 2.0 * config.lora_rank
    lcfg = LoraConfig(r=config.lora_rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets)
    inject_adapter_in_model(lcfg, model)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            params.append(p)
    return params


@dataclass
class SearchOutcome:
    """What the learnable search found.

    Attributes:
        kept: kept global block indices.
        confidences: per group, the EMA gate's top probability.
        probabilities: per group, the EMA gate's distribution over its candidates.
        log: decision log entries (step, loss, tau, scaling, decision, confidence, probabilities).
        steps: optimizer steps done.
        seconds_per_step: mean wall time of one search step (s), this process.
        trainable_params: ΔΦ parameter count (gates excluded).
    """

    kept: list[int]
    confidences: list[float]
    probabilities: list[list[float]]
    log: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds_per_step: float = 0.0
    trainable_params: int = 0


def learn_mask(model: nn.Module, stack: BlockStack, data: DataSource, pattern: mk.Pattern,
               config: DepthPruneConfig, *, run_dir: Path | None = None, ctx: dist.DistContext | None = None,
               on_progress: ProgressFn | None = None, device: str | torch.device | None = None) -> SearchOutcome:
    """Run the learnable search on a copy of ``model`` (``model`` is not changed).

    Args:
        model: the pretrained model.
        stack: its block-stack adapter.
        data: training samples shaped like the model input.
        pattern: one ``(N, M)`` per group.
        config: search hyper-parameters (``steps`` in optimizer steps).
        run_dir: where resumable checkpoints go (``config.checkpoint_every`` > 0); an existing
            checkpoint there is resumed.
        ctx: distributed context (default: one process).
        on_progress: ``(stage, done, total)`` callback, called after every step.
        device: where to train (default: the context's device). Batches and Gumbel noise are
            drawn on the CPU and moved, so a seed gives the same draws on every device.

    Returns:
        The decision, confidences and the decision log.
    """
    ctx = ctx or dist.DistContext()
    dev = torch.device(device if device is not None else ctx.device)
    torch.manual_seed(config.seed)
    clone, state = gated_copy(model, stack)
    clone.to(dev)
    delta_params = attach_delta(clone, config)
    module = GateSearchModule(clone, stack, state, pattern, config.gate_init, tuple(config.protect))
    module.to(dev)
    force_eval(module)
    groups = [{"params": list(module.gates), "lr": config.effective_gate_lr}]
    if delta_params:
        groups.append({"params": delta_params, "lr": config.lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    ema = [g.detach().clone() for g in module.gates]
    log: list[dict[str, Any]] = []
    start = 0
    if run_dir is not None and config.checkpoint_every:
        state_ck = ckpt.load_latest(run_dir)
        if state_ck is not None:
            check_resume_objective(config, state_ck.get("objective"), where=str(run_dir))
            trainable = dict(module.named_parameters())
            with torch.no_grad():
                for name, value in state_ck["trainable"].items():
                    trainable[name].copy_(value)
            opt.load_state_dict(state_ck["optimizer"])
            ema = [e.to(dev).clone() for e in state_ck["ema_gates"]]
            log = list(state_ck["log"])
            start = int(state_ck["step"])
            logger.info("resumed the search at step %d from %s", start, run_dir)
    wrapped = dist.wrap_model(module, ctx)
    schedule = NoiseSchedule(config.timesteps)
    null = stack.null_class(model)
    params = [p for p in module.parameters() if p.requires_grad]
    elapsed, timed = 0.0, 0
    for step in range(start, config.steps):
        t0 = time.perf_counter()
        gen = step_generator(config.seed, ctx.rank, step)
        tau = mk.linear_schedule(*config.tau_range, step, config.steps)
        scaling = mk.linear_schedule(*config.scaling_range, step, config.steps)
        opt.zero_grad(set_to_none=True)
        total = None
        for _ in range(config.grad_accum):  # one generator per step: micro-batch 0 is the unaccumulated batch
            batch = make_batch(data, schedule, config.batch_size, gen, null_class=null,
                               label_dropout=config.label_dropout).to(dev)
            gumbel = [mk.sample_gumbel((config.batch_size, o.shape[0]), gen).to(dev) for o in module.options]
            with autocast(dev, config.precision):
                pred, _ = wrapped(batch.x_t, batch.t, batch.cond, gumbel, tau, scaling)
            pred = pred.float()
            if config.search_loss == "eps+vlb" and not learns_sigma(pred, batch.x0.shape[1]):
                raise ConfigError("search_loss 'eps+vlb' needs a model that learns its variance "
                                  f"({2 * batch.x0.shape[1]} output channels), this one has {pred.shape[1]}",
                                  where="search_loss", fix="use search_loss='eps'")
            loss = training_loss(pred, batch.noise, batch.x0, batch.x_t, batch.t, schedule, config.search_loss)
            micro = loss / config.grad_accum if config.grad_accum > 1 else loss
            micro.backward()
            total = micro.detach() if total is None else total + micro.detach()
        loss = total
        mean_loss = float(dist.all_reduce_mean(loss, ctx))
        if math.isfinite(mean_loss):
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
        else:
            logger.warning("step %d: loss is not finite; step skipped", step)
        d = ema_decay_at(config.ema_decay, step)
        with torch.no_grad():
            for e, g in zip(ema, module.gates, strict=True):
                e.mul_(d).add_(g.detach(), alpha=1 - d)
        elapsed += time.perf_counter() - t0
        timed += 1
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            kept, conf = mk.decide(ema, module.options, pattern, scaling)
            probs = [torch.softmax(e * scaling, -1).tolist() for e in ema]
            log.append({"step": step + 1, "loss": mean_loss, "tau": tau, "scaling": scaling,
                        "decision": kept, "confidence": conf, "probabilities": probs})
            logger.info("step %d loss %.4f decision %s confidence %s", step + 1, mean_loss, kept,
                        [round(c, 3) for c in conf])
        if run_dir is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            if ctx.is_main:
                trainable = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
                ckpt.save_checkpoint(run_dir, step + 1, to_cpu({
                    "trainable": trainable, "optimizer": opt.state_dict(), "ema_gates": [e.clone() for e in ema],
                    "log": log, "objective": objective_of(config)}))
            dist.barrier(ctx)
        if on_progress is not None:
            on_progress("search", step + 1, config.steps)
    final_scaling = config.scaling_range[1]
    kept, conf = mk.decide(ema, module.options, pattern, final_scaling)
    probs = [torch.softmax(e * final_scaling, -1).tolist() for e in ema]
    return SearchOutcome(kept=kept, confidences=conf, probabilities=probs, log=log, steps=config.steps,
                         seconds_per_step=elapsed / max(timed, 1),
                         trainable_params=sum(p.numel() for p in delta_params))
