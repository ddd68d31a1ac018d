"""``prune_depth``: choose blocks to keep (learnable or a baseline) and build the shallower model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilekit._deps import toolchain_versions
from mobilekit.errors import ConfigError
from mobilekit.train import distributed as dist
from mobilekit.train.tinyfusion import masks as mk
from mobilekit.train.tinyfusion._common import calibration_batches, calibration_loss, force_eval
from mobilekit.train.tinyfusion.baselines import choose_baseline
from mobilekit.train.tinyfusion.blocks import BlockStack, check_outside_reads, gated_copy, resolve_stack
from mobilekit.train.tinyfusion.config import DepthPruneConfig
from mobilekit.train.tinyfusion.data import DataSource, load_data
from mobilekit.train.tinyfusion.surgery import build_pruned, save_pruned

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


@dataclass
class PruneResult:
    """Outcome of depth pruning.

    Attributes:
        model: the plain pruned model (same class, original weights of the kept blocks).
        kept: kept block indices of the original model.
        depth_before: blocks before pruning.
        method: the pruning method.
        pattern: one ``[N, M]`` per group.
        calibration_loss: epsilon-MSE of the pruned model on the fixed calibration set, right
            after pruning (before recovery).
        confidences: per group, the EMA gate's top probability (learnable only).
        scores: per-block scores a baseline used (e.g. ``block_influence``).
        log: the learnable search's decision log.
        seconds: wall time of the whole call (s).
        search_seconds_per_step: mean wall time of one search step (s; learnable only).
        config: the config envelope.
        data: name of the data source.
        out_dir: where the model and ``prune.json`` were written (None: not saved).
        device: the device the search and calibration ran on.
    """

    model: nn.Module
    kept: list[int]
    depth_before: int
    method: str
    pattern: list[list[int]]
    calibration_loss: float
    confidences: list[float] | None = None
    scores: dict[str, list[float]] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    search_seconds_per_step: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    out_dir: Path | None = None
    device: str = "cpu"

    @property
    def groups(self) -> list[list[int]]:
        """Global layer indices of every pattern group."""
        return [list(r) for r in mk.group_ranges(tuple((n, m) for n, m in self.pattern))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (everything but the model), with seed and toolchain versions."""
        return {"kept": self.kept, "depth_before": self.depth_before, "depth_after": len(self.kept),
                "method": self.method, "pattern": self.pattern, "groups": self.groups,
                "calibration_loss": self.calibration_loss, "confidences": self.confidences, "scores": self.scores,
                "log": self.log, "seconds": self.seconds, "search_seconds_per_step": self.search_seconds_per_step,
                "seed": self.config.get("data", {}).get("seed"), "config": self.config, "data": self.data,
                "device": self.device,
                "model_class": type(self.model).__name__, "toolchain": toolchain_versions()}


def prune_depth(model: nn.Module, data: str | Path | DataSource, config: DepthPruneConfig | None = None, *,
                stack: BlockStack | None = None, out_dir: Path | None = None,
                on_progress: ProgressFn | None = None, device: str | torch.device | None = None) -> PruneResult:
    """Choose which transformer blocks to keep and build the shallower model.

    ``model`` is not changed. Under ``torchrun`` every process runs this call; the search is
    data-parallel (DDP, gloo on CPU) and only rank 0 writes ``out_dir``.

    Args:
        model: a diffusers ``DiTTransformer2DModel``/``PixArtTransformer2DModel``, or any model
            with a ``stack`` adapter.
        data: ``"digits"``, an image folder, a latents ``.safetensors`` file, or a DataSource.
        config: method, N:M pattern and hyper-parameters (default: learnable 1:2).
        stack: block-stack adapter for models not supported out of the box.
        out_dir: if given, writes ``model/`` (save_pretrained), ``prune.json``, ``decisions.png``
            (learnable) and resumable checkpoints (``config.checkpoint_every``).
        on_progress: ``(stage, done, total)`` callback.
        device: where to search and calibrate (default: CUDA when available, else CPU; under
            ``torchrun`` on CUDA, this process's GPU). The returned model lives there.

    Returns:
        The pruned model and its record.

    Raises:
        ConfigError: the pattern does not divide the depth, the model is unsupported, the
            model runs block parts from outside the blocks that its adapter does not declare,
            or the data does not fit the model.

    Example:
        >>> res = prune_depth(dit, "digits", DepthPruneConfig(pattern="1:2", steps=50))
        >>> res.kept, res.model.config.num_layers
    """
    t_start = time.perf_counter()
    config = config or DepthPruneConfig()
    stack = resolve_stack(model, stack)
    depth = len(stack.blocks(model))
    pattern = mk.parse_pattern(config.pattern, depth)
    source = load_data(data, stack.input_shape(model))
    bad = [k for k in config.protect if k >= depth]
    if bad:
        raise ConfigError(f"protected blocks {bad} are outside the model's {depth} blocks", where="protect",
                          fix=f"use indices in 0..{depth - 1}")
    ctx = dist.init_distributed(None if device is None else str(device))
    dev = torch.device(ctx.device)
    out_dir = Path(out_dir) if out_dir is not None else None
    batches = calibration_batches(source, _schedule(config), config.calib_samples, config.seed, stack.null_class(model))
    # A model that runs part of a block from outside the stack (the diffusers DiT head reads
    # transformer_blocks[0].norm1.emb) must say so in its adapter, or pruning changes it silently.
    probe = batches[0].to(next(model.parameters()).device)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        check_outside_reads(model, stack, lambda: stack.predict(model, probe.x_t[:2], probe.t[:2],
                                                                None if probe.cond is None else probe.cond[:2]))
    batches = [b.to(dev) for b in batches]
    confidences: list[float] | None = None
    scores: dict[str, list[float]] = {}
    log: list[dict[str, Any]] = []
    per_step: float | None = None
    if config.method == "learnable":
        from mobilekit.train.tinyfusion.search import learn_mask

        outcome = learn_mask(model, stack, source, pattern, config,
                             run_dir=out_dir if config.checkpoint_every else None, ctx=ctx, on_progress=on_progress,
                             device=dev)
        kept, confidences, log, per_step = outcome.kept, outcome.confidences, outcome.log, outcome.seconds_per_step
        kept = dist.broadcast_object(kept, ctx)
    else:
        gated, state = gated_copy(model, stack)
        force_eval(gated.to(dev))
        kept, scores = choose_baseline(config.method, gated, stack, state, batches, pattern, kept=config.kept,
                                       trials=config.random_trials, seed=config.seed, on_progress=on_progress,
                                       scope=config.baseline_scope)
    pruned = build_pruned(model, kept, stack)
    force_eval(pruned.to(dev))
    calib = calibration_loss(pruned, stack, batches)
    result = PruneResult(model=pruned, kept=kept, depth_before=depth, method=config.method,
                         pattern=[[n, m] for n, m in pattern], calibration_loss=calib, confidences=confidences,
                         scores=scores, log=log, search_seconds_per_step=per_step, config=config.to_dict(),
                         data=source.name, out_dir=out_dir, device=str(dev))
    result.seconds = time.perf_counter() - t_start
    logger.info("kept %d of %d blocks: %s (calibration loss %.4f)", len(kept), depth, kept, calib)
    if out_dir is not None and ctx.is_main:
        save_pruned(pruned, out_dir, result.to_dict())
        if log:
            from mobilekit.train.tinyfusion.plots import plot_decisions

            plot_decisions(log, out_dir / "decisions.png")
    dist.barrier(ctx)
    return result


def _schedule(config: DepthPruneConfig) -> Any:
    from mobilekit.train.tinyfusion.diffusion import NoiseSchedule

    return NoiseSchedule(config.timesteps)


__all__ = ["PruneResult", "prune_depth"]
