"""Recovery of a pruned model: masked knowledge distillation from the unpruned teacher, or plain fine-tuning.

Masked KD (TinyFusion §4.4): ``alpha_kd * MSE(student out, teacher out) + alpha_gt * diffusion
loss + beta * hidden-state loss``, where the hidden-state loss compares student blocks with
teacher blocks at the ends of the pattern's groups (1:2: student ``i`` <-> teacher ``2i+1``) and
ignores "massive activations": per sample, entries farther than ``k_sigma`` standard
deviations from the mean (over tokens and channels) are masked. Unlike the reference code,
an entry is compared only where *both* student and teacher are inside their ranges (the
reference compares a masked value against 0 where only one side is masked). ``beta`` decays
linearly to 0 at the last step; the learning rate follows a cosine from ``lr`` to ``lr_min``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit._deps import toolchain_versions
from mobilekit._io import atomic_path, write_json_atomic
from mobilekit.errors import ConfigError
from mobilekit.train import checkpoint as ckpt
from mobilekit.train import distributed as dist
from mobilekit.train.tinyfusion._common import ema_decay_at, force_eval, make_batch, step_generator
from mobilekit.train.tinyfusion.blocks import BlockStack, resolve_stack
from mobilekit.train.tinyfusion.config import DistillConfig
from mobilekit.train.tinyfusion.data import DataSource, load_data
from mobilekit.train.tinyfusion.diffusion import NoiseSchedule, diffusion_loss

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


def outlier_mask(h: torch.Tensor, k_sigma: float) -> torch.Tensor:
    """True where ``|h - mean| <= k_sigma * std``, statistics per sample over all other dims."""
    flat = h.flatten(1)
    mu = flat.mean(dim=1, keepdim=True)
    sd = flat.std(dim=1, keepdim=True)
    return ((flat - mu).abs() <= k_sigma * sd).reshape(h.shape)


def masked_hidden_mse(h_s: torch.Tensor, h_t: torch.Tensor, k_sigma: float) -> torch.Tensor:
    """MSE of student and teacher hidden states over entries inside ``k_sigma`` on both sides.

    The mean is over all entries (masked ones count as zero error), as in the paper.
    """
    h_t = h_t.detach()
    keep = outlier_mask(h_s.detach(), k_sigma) & outlier_mask(h_t, k_sigma)
    diff = torch.where(keep, h_s - h_t, torch.zeros_like(h_s))
    return diff.pow(2).mean()


def layer_pairs(student_depth: int, teacher_depth: int, *, kept: Sequence[int] | None = None,
                groups: Sequence[Sequence[int]] | None = None) -> list[tuple[int, int]]:
    """``(student block, teacher block)`` pairs for the hidden-state loss.

    With the pattern ``groups`` and ``kept`` indices: the last kept student block of each group
    pairs with the group's last teacher block (1:2 gives ``i <-> 2i+1``). With ``kept`` alone:
    student ``i`` pairs with the teacher block before the next kept one. With neither, the
    depths must divide: ``i <-> r*i + r-1`` with ``r = teacher/student``.

    Raises:
        ConfigError: no pairing can be derived.
    """
    if kept is not None and groups:
        pairs = []
        for grp in groups:
            pos = [i for i, k in enumerate(kept) if k in grp]
            if pos:
                pairs.append((pos[-1], grp[-1]))
        return pairs
    if kept is not None:
        if len(kept) != student_depth:
            raise ConfigError(f"{len(kept)} kept indices but the student has {student_depth} blocks", where="kept",
                              fix="pass the kept indices the pruning returned")
        return [(i, (kept[i + 1] - 1) if i + 1 < len(kept) else teacher_depth - 1) for i in range(len(kept))]
    if teacher_depth % student_depth:
        raise ConfigError(f"cannot pair a {student_depth}-block student with a {teacher_depth}-block teacher",
                          where="pairs", fix="pass kept= (and groups=) from the pruning result, or config pairs")
    r = teacher_depth // student_depth
    return [(i, r * i + r - 1) for i in range(student_depth)]


class _Capture:
    """Forward hooks keeping the outputs of chosen blocks."""

    def __init__(self, blocks: nn.ModuleList, wanted: Sequence[int]) -> None:
        self.out: dict[int, torch.Tensor] = {}
        self.handles = [blocks[i].register_forward_hook(self._hook(i)) for i in sorted(set(wanted))]

    def _hook(self, i: int) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            self.out[i] = out[0] if isinstance(out, tuple) else out
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class DistillResult:
    """Outcome of recovery.

    Attributes:
        model: the recovered student (EMA weights when ``ema_decay`` > 0).
        steps: optimizer steps done.
        pairs: hidden-state pairs used (masked KD).
        log: loss log entries (step, loss, gt, kd, rep, beta, lr).
        seconds_per_step: mean wall time of one step (s).
        config: the config envelope.
        out_dir: where the model and ``distill.json`` were written.
    """

    model: nn.Module
    steps: int
    pairs: list[tuple[int, int]] = field(default_factory=list)
    log: list[dict[str, float]] = field(default_factory=list)
    seconds_per_step: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (everything but the model)."""
        return {"steps": self.steps, "pairs": [list(p) for p in self.pairs], "log": self.log,
                "seconds_per_step": self.seconds_per_step, "config": self.config,
                "seed": self.config.get("data", {}).get("seed"), "model_class": type(self.model).__name__,
                "toolchain": toolchain_versions()}


def _lr_at(config: DistillConfig, step: int) -> float:
    if config.steps <= 1:
        return config.lr
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * step / (config.steps - 1)))


def distill(student: nn.Module, teacher: nn.Module | None, data: str | Path | DataSource,
            config: DistillConfig | None = None, *, kept: Sequence[int] | None = None,
            groups: Sequence[Sequence[int]] | None = None, stack: BlockStack | None = None,
            out_dir: Path | None = None, on_progress: ProgressFn | None = None) -> DistillResult:
    """Recover a pruned ``student`` by (masked) distillation from ``teacher``, or plain fine-tuning.

    Neither model is changed: the student is trained on a copy. Under ``torchrun`` this is
    data-parallel (DDP) and only rank 0 writes. With ``out_dir`` and ``checkpoint_every``, a
    killed run started again with the same arguments resumes from its last checkpoint.

    Args:
        student: the pruned model.
        teacher: the unpruned model (not needed for ``mode="finetune"``).
        data: ``"digits"``, an image folder, a latents file, or a DataSource.
        config: recovery hyper-parameters (``steps`` in optimizer steps).
        kept: the teacher block indices the student kept (from ``PruneResult.kept``).
        groups: the pattern groups (``PruneResult.groups``), for group-end layer pairing.
        stack: block-stack adapter (default: detected).
        out_dir: writes ``model/`` (save_pretrained), ``distill.json`` and checkpoints.
        on_progress: ``(stage, done, total)`` callback.

    Returns:
        The recovered model and its loss log.

    Example:
        >>> res = distill(pruned.model, dit, "digits", DistillConfig(steps=200), kept=pruned.kept,
        ...               groups=pruned.groups)
    """
    config = config or DistillConfig()
    stack = resolve_stack(student, stack)
    if config.mode != "finetune":
        if teacher is None:
            raise ConfigError(f"mode {config.mode!r} needs a teacher", where="teacher",
                              fix="pass the unpruned model, or use mode='finetune'")
        resolve_stack(teacher, stack)
    source = load_data(data, stack.input_shape(student))
    ctx = dist.init_distributed("cpu")
    torch.manual_seed(config.seed)
    model = force_eval(copy.deepcopy(student))
    for p in model.parameters():
        p.requires_grad_(True)
    ema = copy.deepcopy(model) if config.ema_decay > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    pairs: list[tuple[int, int]] = []
    if config.mode == "masked-kd" and teacher is not None:
        pairs = list(config.pairs) or layer_pairs(len(stack.blocks(model)), len(stack.blocks(teacher)),
                                                  kept=kept, groups=groups)
    log: list[dict[str, float]] = []
    start = 0
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None and config.checkpoint_every:
        state = ckpt.load_latest(out_dir)
        if state is not None:
            model.load_state_dict(state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            log = list(state["log"])
            start = int(state["step"])
            logger.info("resumed recovery at step %d from %s", start, out_dir)
    wrapped = dist.wrap_model(model, ctx)
    schedule = NoiseSchedule(config.timesteps)
    null = stack.null_class(student)
    cap_s = _Capture(stack.blocks(model), [s for s, _ in pairs]) if pairs else None
    cap_t = _Capture(stack.blocks(teacher), [t for _, t in pairs]) if pairs and teacher is not None else None
    elapsed, timed = 0.0, 0
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()  # no hidden label dropout; restored below
    try:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            lr = _lr_at(config, step)
            for g in opt.param_groups:
                g["lr"] = lr
            beta = config.beta * (1 - step / (config.steps - 1)) if config.steps > 1 else 0.0
            gen = step_generator(config.seed, ctx.rank, step, salt=1)
            b = make_batch(source, schedule, config.batch_size, gen, null_class=null, label_dropout=config.label_dropout)
            pred = stack.predict(wrapped, b.x_t, b.t, b.cond)
            gt = diffusion_loss(pred, b.noise)
            kd = rep = torch.zeros(())
            if config.mode != "finetune":
                with torch.no_grad():
                    pred_t = stack.predict(teacher, b.x_t, b.t, b.cond)
                kd = F.mse_loss(pred, pred_t)
                loss = config.alpha_kd * kd + config.alpha_gt * gt
                if pairs and cap_s is not None and cap_t is not None:
                    rep = torch.stack([masked_hidden_mse(cap_s.out[s], cap_t.out[t], config.k_sigma)
                                       for s, t in pairs]).mean()
                    loss = loss + beta * rep
            else:
                loss = gt
            opt.zero_grad(set_to_none=True)
            loss.backward()
            mean_loss = float(dist.all_reduce_mean(loss, ctx))
            if math.isfinite(mean_loss):
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
            else:
                logger.warning("step %d: loss is not finite; step skipped", step)
            if ema is not None:
                d = ema_decay_at(config.ema_decay, step)
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                        pe.mul_(d).add_(pm.detach(), alpha=1 - d)
            elapsed += time.perf_counter() - t0
            timed += 1
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                log.append({"step": step + 1, "loss": mean_loss, "gt": float(gt.detach()), "kd": float(kd.detach()), "rep": float(rep.detach()),
                            "beta": beta, "lr": lr})
            if out_dir is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                if ctx.is_main:
                    ckpt.save_checkpoint(out_dir, step + 1, {
                        "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else {},
                        "optimizer": opt.state_dict(), "log": log})
                dist.barrier(ctx)
            if on_progress is not None:
                on_progress(config.mode, step + 1, config.steps)
    finally:
        if teacher is not None:
            teacher.train(teacher_was_training)
        for cap in (cap_s, cap_t):
            if cap is not None:
                cap.remove()
    final = force_eval(ema if ema is not None else model)
    for p in final.parameters():
        p.requires_grad_(False)
    result = DistillResult(model=final, steps=config.steps, pairs=pairs, log=log,
                           seconds_per_step=elapsed / max(timed, 1), config=config.to_dict(), out_dir=out_dir)
    if out_dir is not None and ctx.is_main:
        with atomic_path(out_dir / "model") as tmp:
            final.save_pretrained(str(tmp), safe_serialization=True)
        write_json_atomic(out_dir / "distill.json", {**result.to_dict(), "data": source.name, "kept": list(kept or [])})
    dist.barrier(ctx)
    return result
