"""Recovery of a pruned model: masked knowledge distillation from the unpruned teacher, or plain fine-tuning.

Masked KD (TinyFusion §4.4): ``alpha_kd * MSE(student out, teacher out) + alpha_gt * diffusion
loss + beta * hidden-state loss``, where the hidden-state loss compares student blocks with
teacher blocks at the ends of the pattern's groups (1:2: student ``i`` <-> teacher ``2i+1``) and
ignores "massive activations": per sample, entries farther than ``k_sigma`` standard
deviations from the mean (over tokens and channels) are masked. Unlike the reference code,
an entry is compared only where *both* student and teacher are inside their ranges (the
reference compares a masked value against 0 where only one side is masked). ``beta`` decays
linearly to 0 at the last step; the learning rate follows a cosine from ``lr`` to ``lr_min``.

Options (recorded in ``distill.json``'s config, checked on resume): ``gt_loss="eps+vlb"`` adds
the VLB term on the learned variance to the ground-truth loss (the paper's L_Diff), and
``kd_variance=True`` adds variance distillation to the KD term: ``KL(teacher || student)``
between the two models' Gaussians ``p(x_{t-1} | x_t)`` with the student's epsilon detached,
so it trains the student's sigma channels (see ``diffusion.variance_kd_loss``).
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
from mobilekit.train.tinyfusion._common import autocast, ema_decay_at, force_eval, make_batch, step_generator, to_cpu
from mobilekit.train.tinyfusion.blocks import BlockStack, resolve_stack
from mobilekit.train.tinyfusion.config import DistillConfig, check_resume_objective, objective_of
from mobilekit.train.tinyfusion.data import DataSource, load_data
from mobilekit.train.tinyfusion.diffusion import NoiseSchedule, learns_sigma, training_loss, variance_kd_loss

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
        device: the device it trained on.
    """

    model: nn.Module
    steps: int
    pairs: list[tuple[int, int]] = field(default_factory=list)
    log: list[dict[str, float]] = field(default_factory=list)
    seconds_per_step: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (everything but the model)."""
        return {"steps": self.steps, "pairs": [list(p) for p in self.pairs], "log": self.log,
                "seconds_per_step": self.seconds_per_step, "config": self.config, "device": self.device,
                "seed": self.config.get("data", {}).get("seed"), "model_class": type(self.model).__name__,
                "toolchain": toolchain_versions()}


def _device_of(module: nn.Module) -> torch.device | None:
    p = next(module.parameters(), None)
    return None if p is None else p.device


def _recovery_loss(config: DistillConfig, stack: BlockStack, student: nn.Module, teacher: nn.Module | None,
                   b: Any, schedule: NoiseSchedule, channels: int, pairs: list[tuple[int, int]],
                   cap_s: _Capture | None, cap_t: _Capture | None,
                   beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ground truth, kd, hidden-state)`` of one micro-batch (losses in fp32)."""
    dev = b.x_t.device
    with autocast(dev, config.precision):
        pred = stack.predict(student, b.x_t, b.t, b.cond)
    pred = pred.float()
    if (config.gt_loss == "eps+vlb" or config.kd_variance) and not learns_sigma(pred, channels):
        field_name = "gt_loss" if config.gt_loss == "eps+vlb" else "kd_variance"
        raise ConfigError(f"{field_name} needs a model that learns its variance ({2 * channels} output channels), "
                          f"the student has {pred.shape[1]}", where=field_name,
                          fix="use gt_loss='eps' and kd_variance=False")
    gt = training_loss(pred, b.noise, b.x0, b.x_t, b.t, schedule, config.gt_loss)
    kd = rep = torch.zeros((), device=dev)
    if config.mode == "finetune" or teacher is None:
        return gt, gt, kd, rep
    with torch.no_grad(), autocast(dev, config.precision):
        pred_t = stack.predict(teacher, b.x_t, b.t, b.cond)
    pred_t = pred_t.float()
    kd = F.mse_loss(pred, pred_t)
    if config.kd_variance:
        kd = kd + variance_kd_loss(pred, pred_t, b.x_t, b.t, schedule)
    loss = config.alpha_kd * kd + config.alpha_gt * gt
    if pairs and cap_s is not None and cap_t is not None:
        rep = torch.stack([masked_hidden_mse(cap_s.out[s].float(), cap_t.out[t].float(), config.k_sigma)
                           for s, t in pairs]).mean()
        loss = loss + beta * rep
    return loss, gt, kd, rep


def _lr_at(config: DistillConfig, step: int) -> float:
    if config.steps <= 1:
        return config.lr
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * step / (config.steps - 1)))


def distill(student: nn.Module, teacher: nn.Module | None, data: str | Path | DataSource,
            config: DistillConfig | None = None, *, kept: Sequence[int] | None = None,
            groups: Sequence[Sequence[int]] | None = None, stack: BlockStack | None = None,
            out_dir: Path | None = None, on_progress: ProgressFn | None = None,
            device: str | torch.device | None = None) -> DistillResult:
    """Recover a pruned ``student`` by (masked) distillation from ``teacher``, or plain fine-tuning.

    Neither model is changed: the student is trained on a copy (the teacher is moved to the
    training device for the run and moved back afterwards). Under ``torchrun`` this is
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
        device: where to train (default: CUDA when available, else CPU; under ``torchrun`` on
            CUDA, this process's GPU). The returned model lives there; checkpoints are saved on
            the CPU, so a run resumes on any device.

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
    ctx = dist.init_distributed(None if device is None else str(device))
    dev = torch.device(ctx.device)
    torch.manual_seed(config.seed)
    model = force_eval(copy.deepcopy(student)).to(dev)
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
            check_resume_objective(config, state.get("objective"), where=str(out_dir))
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
    teacher_device = _device_of(teacher) if teacher is not None else None
    if teacher is not None:
        teacher.eval()  # no hidden label dropout; restored below
        teacher.to(dev)
    channels = stack.input_shape(student)[0]
    try:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            lr = _lr_at(config, step)
            for g in opt.param_groups:
                g["lr"] = lr
            beta = config.beta * (1 - step / (config.steps - 1)) if config.steps > 1 else 0.0
            gen = step_generator(config.seed, ctx.rank, step, salt=1)
            opt.zero_grad(set_to_none=True)
            parts: dict[str, torch.Tensor] = {}
            for _ in range(config.grad_accum):  # one generator per step: micro-batch 0 is the unaccumulated batch
                b = make_batch(source, schedule, config.batch_size, gen, null_class=null,
                               label_dropout=config.label_dropout).to(dev)
                loss, gt, kd, rep = _recovery_loss(config, stack, wrapped, teacher, b, schedule, channels, pairs,
                                                   cap_s, cap_t, beta)
                scale = config.grad_accum
                (loss / scale if scale > 1 else loss).backward()
                for name, v in (("loss", loss), ("gt", gt), ("kd", kd), ("rep", rep)):
                    v = v.detach() / scale if scale > 1 else v.detach()
                    parts[name] = v if name not in parts else parts[name] + v
            loss, gt, kd, rep = parts["loss"], parts["gt"], parts["kd"], parts["rep"]
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
                    ckpt.save_checkpoint(out_dir, step + 1, to_cpu({
                        "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else {},
                        "optimizer": opt.state_dict(), "log": log, "objective": objective_of(config)}))
                dist.barrier(ctx)
            if on_progress is not None:
                on_progress(config.mode, step + 1, config.steps)
    finally:
        if teacher is not None:
            teacher.train(teacher_was_training)
            if teacher_device is not None:
                teacher.to(teacher_device)
        for cap in (cap_s, cap_t):
            if cap is not None:
                cap.remove()
    final = force_eval(ema if ema is not None else model)
    for p in final.parameters():
        p.requires_grad_(False)
    result = DistillResult(model=final, steps=config.steps, pairs=pairs, log=log,
                           seconds_per_step=elapsed / max(timed, 1), config=config.to_dict(), out_dir=out_dir,
                           device=str(dev))
    if out_dir is not None and ctx.is_main:
        with atomic_path(out_dir / "model") as tmp:
            final.save_pretrained(str(tmp), safe_serialization=True)
        write_json_atomic(out_dir / "distill.json", {**result.to_dict(), "data": source.name, "kept": list(kept or [])})
    dist.barrier(ctx)
    return result
