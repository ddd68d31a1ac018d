"""Configs of depth pruning and recovery: frozen, validated, versioned, serialisable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mobilekit.errors import ConfigError

METHODS = ("learnable", "shortgpt", "flux-lite", "sensitivity", "oracle", "random", "indices")
DELTAS = ("lora", "full", "frozen")
RECOVERY_MODES = ("masked-kd", "kd", "finetune")
OBJECTIVES = ("eps", "eps+vlb")
PRECISIONS = ("fp32", "bf16")

# Fields that define a run's loss: a resumed run must have the same values as its checkpoint.
OBJECTIVE_FIELDS = ("search_loss", "gt_loss", "kd_variance", "precision", "grad_accum")


def _common_checks(cfg: Any) -> None:
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {cfg.precision!r}", where="precision", fix=f"choose one of {PRECISIONS}")
    _positive("grad_accum", cfg.grad_accum)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}", where=name,
                          fix=f"set {name} to a {'non-negative' if allow_zero else 'positive'} value")


class _Serialisable:
    def to_dict(self) -> dict[str, Any]:
        """The config as a ``{type, version, data}`` envelope of JSON types."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}
        return {"type": type(self).__name__, "version": data.pop("version"), "data": data}

    @classmethod
    def from_dict(cls, envelope: dict[str, Any]) -> Any:
        """Rebuild a config from :meth:`to_dict` output (or from its ``data`` part alone)."""
        data = envelope.get("data", envelope)
        if envelope.get("type", cls.__name__) != cls.__name__:
            raise ConfigError(f"expected a {cls.__name__}, got {envelope.get('type')}", where="type",
                              fix=f"pass a dict written by {cls.__name__}.to_dict()")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)}", where=sorted(unknown)[0],
                              fix=f"known fields: {sorted(known)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kw)


def objective_of(config: Any) -> dict[str, Any]:
    """The loss-defining fields of ``config`` (see ``OBJECTIVE_FIELDS``)."""
    return {k: getattr(config, k) for k in OBJECTIVE_FIELDS if hasattr(config, k)}


def check_resume_objective(config: Any, saved: dict[str, Any] | None, where: str) -> None:
    """Raise when a checkpoint was written with a different objective than ``config``.

    ``saved`` is the checkpoint's ``objective`` entry (None for checkpoints written before it
    was recorded: those ran with the defaults, which must then match).

    Raises:
        ConfigError: a loss-defining field differs.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(type(config)) if f.name in OBJECTIVE_FIELDS}
    saved = saved if saved is not None else defaults
    now = objective_of(config)
    diff = {k: (saved.get(k, defaults.get(k)), v) for k, v in now.items() if saved.get(k, defaults.get(k)) != v}
    if diff:
        first = sorted(diff)[0]
        raise ConfigError(f"the checkpoint was written with {first}={diff[first][0]!r} but this run has "
                          f"{diff[first][1]!r}", where=where,
                          fix=f"resume with the same {', '.join(sorted(diff))} (or start a new run directory)")


@dataclass(frozen=True, kw_only=True)
class DepthPruneConfig(_Serialisable):
    """How to choose which blocks to keep.

    Attributes:
        method: ``sensitivity`` (the default: drop the blocks whose removal alone costs least),
            ``learnable`` (TinyFusion), ``shortgpt``, ``flux-lite``, ``oracle``, ``random`` (best of
            ``random_trials`` by calibration loss) or ``indices``. The default follows the 5-seed
            reproduction (``benchmarks/results/tinyfusion.md``): after recovery, sensitivity reached
            FD 210 ± 8 against learnable's 290 ± 12 (95% intervals), with the head-conditioning fix.
        pattern: N:M local pattern, ``"1:2"``, ``"2:4"``, or a mixed per-group list ``"2:4,3:4"``.
            The kept depth is the sum of N. Baselines use it only for the kept depth (and
            ``oracle`` for its groups).
        kept: explicit kept block indices (``method="indices"``).
        steps: optimizer steps of the learnable search.
        batch_size: samples per step and process.
        delta: recoverability estimate ΔΦ co-trained with the gates: ``lora``, ``full`` or ``frozen``.
        lora_rank: LoRA rank on every linear layer.
        lora_alpha: LoRA alpha (None: 2 x rank).
        lora_targets: module-name suffixes to adapt (empty: every ``nn.Linear``).
        lr: learning rate of ΔΦ (LoRA or full weights).
        gate_lr: learning rate of the gate logits (None: 10 x ``lr``).
        tau_range: Gumbel temperature, linear from first to second value over the steps.
        scaling_range: gate logit scale, linear from first to second value.
        gate_init: initial value of every gate logit (uniform distribution).
        ema_decay: decay of the gate EMA that makes the decision (warm-up ``(1+s)/(10+s)`` caps it).
        grad_clip: max global gradient norm (0: no clipping).
        label_dropout: probability of replacing a label by the null class (classifier-free guidance).
        calib_samples: samples in the fixed calibration set (baselines, calibration loss).
        random_trials: candidate masks the ``random`` method scores.
        baseline_scope: where the score baselines (``shortgpt``, ``flux-lite``, ``sensitivity``,
            ``random``) choose: ``global`` keeps the best blocks anywhere (only the number kept
            follows the pattern); ``groups`` keeps the best N of every group of M, so they obey
            the same N:M constraint the learnable search and ``oracle`` do.
        seed: run seed (per-process seed = seed * world + rank).
        log_every: steps between decision log entries.
        checkpoint_every: steps between resumable checkpoints (0: none).
        timesteps: diffusion timesteps of the noise schedule.
        search_loss: ``eps`` (epsilon MSE) or ``eps+vlb`` (plus improved DDPM's VLB term on the
            learned variance, epsilon detached: the DiT loss the paper searches with; needs a
            model that learns sigma).
        protect: block indices every candidate mask must keep (``learnable`` only), e.g. ``(0,)``
            to keep the block whose embedder conditions a diffusers DiT's head.
        precision: ``fp32`` or ``bf16`` (autocast on the training device; losses in fp32).
        grad_accum: micro-batches of ``batch_size`` per optimizer step.
        version: config schema version.
    """

    method: str = "sensitivity"
    pattern: str = "1:2"
    kept: tuple[int, ...] = ()
    steps: int = 100
    batch_size: int = 16
    delta: str = "lora"
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = ()
    lr: float = 1e-4
    gate_lr: float | None = None
    tau_range: tuple[float, float] = (4.0, 0.1)
    scaling_range: tuple[float, float] = (100.0, 100.0)
    gate_init: float = 0.02
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    calib_samples: int = 64
    random_trials: int = 16
    baseline_scope: str = "global"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    timesteps: int = 1000
    search_loss: str = "eps"
    protect: tuple[int, ...] = ()
    precision: str = "fp32"
    grad_accum: int = 1
    version: int = field(default=2)

    def __post_init__(self) -> None:
        _common_checks(self)
        if self.search_loss not in OBJECTIVES:
            raise ConfigError(f"unknown search loss {self.search_loss!r}", where="search_loss",
                              fix=f"choose one of {OBJECTIVES}")
        if any(k < 0 for k in self.protect) or len(set(self.protect)) != len(self.protect):
            raise ConfigError(f"protected blocks {self.protect} must be distinct and >= 0", where="protect",
                              fix="list each block once, e.g. (0,)")
        if self.protect and self.method != "learnable":
            raise ConfigError(f"protect is only used by the learnable search, not {self.method!r}", where="protect",
                              fix="use method='learnable', or method='indices' with the blocks you want")
        if self.method not in METHODS:
            raise ConfigError(f"unknown pruning method {self.method!r}", where="method", fix=f"choose one of {METHODS}")
        if self.baseline_scope not in ("global", "groups"):
            raise ConfigError(f"unknown baseline scope {self.baseline_scope!r}", where="baseline_scope",
                              fix="choose 'global' or 'groups'")
        if self.delta not in DELTAS:
            raise ConfigError(f"unknown delta {self.delta!r}", where="delta", fix=f"choose one of {DELTAS}")
        if self.method == "indices" and not self.kept:
            raise ConfigError("method 'indices' needs kept block indices", where="kept", fix="pass kept=(0, 2, 4)")
        if len(set(self.kept)) != len(self.kept) or any(k < 0 for k in self.kept):
            raise ConfigError(f"kept indices {self.kept} must be distinct and >= 0", where="kept",
                              fix="list each kept block once")
        for name in ("steps", "batch_size", "lora_rank", "calib_samples", "random_trials", "log_every", "timesteps"):
            _positive(name, getattr(self, name))
        for name in ("lr", "grad_clip", "checkpoint_every"):
            _positive(name, getattr(self, name), allow_zero=True)
        if self.gate_lr is not None:
            _positive("gate_lr", self.gate_lr)
        for name in ("tau_range", "scaling_range"):
            rng = getattr(self, name)
            if len(rng) != 2 or min(rng) <= 0:
                raise ConfigError(f"{name} must be two positive numbers, got {rng}", where=name,
                                  fix="e.g. (4.0, 0.1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}", where="ema_decay", fix="e.g. 0.999")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"label_dropout must be in [0, 1), got {self.label_dropout}", where="label_dropout",
                              fix="e.g. 0.1, or 0 to disable")

    @property
    def effective_gate_lr(self) -> float:
        """Gate learning rate (10 x ``lr`` unless set)."""
        return self.gate_lr if self.gate_lr is not None else 10.0 * self.lr


@dataclass(frozen=True, kw_only=True)
class DistillConfig(_Serialisable):
    """How to recover a pruned model.

    Attributes:
        mode: ``masked-kd`` (output KD + ground truth + masked hidden-state loss), ``kd``
            (output KD + ground truth) or ``finetune`` (ground truth only).
        steps: optimizer steps.
        batch_size: samples per step and process.
        lr: AdamW learning rate at step 0.
        lr_min: learning rate reached at the last step (cosine).
        alpha_kd: weight of the output KD loss.
        alpha_gt: weight of the ground-truth diffusion loss.
        beta: initial weight of the hidden-state loss, decayed linearly to 0 at the last step.
        k_sigma: activations farther than ``k_sigma`` standard deviations from the per-sample
            mean are masked out of the hidden-state loss.
        pairs: explicit ``(student block, teacher block)`` pairs (empty: derived from the kept layers).
        grad_clip: max global gradient norm (0: no clipping).
        ema_decay: decay of the student weight EMA saved as the result (0: save raw weights).
        label_dropout: probability of the null class label.
        seed: run seed.
        log_every: steps between loss log entries.
        checkpoint_every: steps between resumable checkpoints (0: none).
        timesteps: diffusion timesteps.
        gt_loss: ground-truth loss: ``eps`` (epsilon MSE) or ``eps+vlb`` (plus the VLB term on the
            learned variance, the paper's L_Diff).
        kd_variance: add variance distillation to the KD loss: ``KL(teacher p(x_{t-1}|x_t) ||
            student p(x_{t-1}|x_t))`` in bits/dim with the student's epsilon detached (trains the
            learned-sigma channels; the paper's KD term).
        precision: ``fp32`` or ``bf16`` (autocast on the training device; losses in fp32).
        grad_accum: micro-batches of ``batch_size`` per optimizer step.
        version: config schema version.
    """

    mode: str = "masked-kd"
    steps: int = 100
    batch_size: int = 16
    lr: float = 2e-4
    lr_min: float = 1e-4
    alpha_kd: float = 0.9
    alpha_gt: float = 0.1
    beta: float = 1e-2
    k_sigma: float = 2.0
    pairs: tuple[tuple[int, int], ...] = ()
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    timesteps: int = 1000
    gt_loss: str = "eps"
    kd_variance: bool = False
    precision: str = "fp32"
    grad_accum: int = 1
    version: int = field(default=2)

    def __post_init__(self) -> None:
        _common_checks(self)
        if self.gt_loss not in OBJECTIVES:
            raise ConfigError(f"unknown ground-truth loss {self.gt_loss!r}", where="gt_loss",
                              fix=f"choose one of {OBJECTIVES}")
        if self.kd_variance and self.mode == "finetune":
            raise ConfigError("kd_variance needs a teacher; mode 'finetune' has none", where="kd_variance",
                              fix="use mode='masked-kd' or 'kd', or drop kd_variance")
        if self.mode not in RECOVERY_MODES:
            raise ConfigError(f"unknown recovery mode {self.mode!r}", where="mode", fix=f"choose one of {RECOVERY_MODES}")
        for name in ("steps", "batch_size", "lr", "k_sigma", "log_every", "timesteps"):
            _positive(name, getattr(self, name))
        for name in ("lr_min", "alpha_kd", "alpha_gt", "beta", "grad_clip", "checkpoint_every"):
            _positive(name, getattr(self, name), allow_zero=True)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}", where="ema_decay", fix="e.g. 0.9999")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"label_dropout must be in [0, 1), got {self.label_dropout}", where="label_dropout",
                              fix="e.g. 0.1")
        for p in self.pairs:
            if len(p) != 2:
                raise ConfigError(f"pair {p} is not (student, teacher)", where="pairs", fix="e.g. ((0, 1), (1, 3))")
