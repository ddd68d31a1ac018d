"""Layer-choice baselines behind the same API as the learnable search.

All score blocks on a fixed calibration set (fixed samples, timesteps and noise) of the
unpruned model and keep ``keep`` blocks:

- ``shortgpt``: block influence ``1 - cos(input, output)`` per token, averaged; the blocks
  with the lowest influence go, the last block is never removed.
- ``flux-lite``: MSE between block input and output; the smallest go.
- ``sensitivity``: calibration loss increase when the block alone is skipped; the smallest go.
- ``oracle``: BK-SDM-style pairs: groups in the first half keep their first layers, groups in
  the second half keep their last layers (28 layers 1:2 -> 0,2,...,12,15,17,...,27).
- ``random``: ``trials`` random kept sets of size ``keep``; the one with the lowest
  calibration loss wins.
- ``indices``: the given kept indices.

``scope="groups"`` makes the score baselines and ``random`` obey the N:M pattern (the best N of
every group of M) instead of keeping the best blocks anywhere; ``oracle`` always obeys it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit.errors import ConfigError
from mobilekit.train.tinyfusion import masks as mk
from mobilekit.train.tinyfusion._common import NoisyBatch, calibration_loss
from mobilekit.train.tinyfusion.blocks import BlockStack, GateState

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


def _keep_mask(depth: int, kept: Sequence[int]) -> torch.Tensor:
    m = torch.zeros(depth)
    m[list(kept)] = 1.0
    return m


@torch.no_grad()
def block_io_scores(gated: nn.Module, stack: BlockStack, state: GateState,
                    batches: list[NoisyBatch]) -> tuple[list[float], list[float]]:
    """Per block: mean block influence ``1 - cos(in, out)`` and mean ``MSE(in, out)``."""
    depth = len(stack.blocks(gated))
    bi = torch.zeros(depth, dtype=torch.float64)
    mse = torch.zeros(depth, dtype=torch.float64)
    count = 0
    state.record = True
    try:
        for b in batches:
            state.trace.clear()
            stack.predict(gated, b.x_t, b.t, b.cond)
            for j, (x_in, x_out) in enumerate(state.trace):
                cos = F.cosine_similarity(x_in.flatten(0, -2).double(), x_out.flatten(0, -2).double(), dim=-1)
                bi[j] += float((1 - cos).mean()) * b.x0.shape[0]
                mse[j] += float(F.mse_loss(x_in.double(), x_out.double())) * b.x0.shape[0]
            count += b.x0.shape[0]
    finally:
        state.record = False
        state.trace.clear()
    return (bi / count).tolist(), (mse / count).tolist()


def keep_top(scores: Sequence[float], keep: int, *, protect_last: bool = False) -> list[int]:
    """Indices of the ``keep`` highest scores (ties: lower index first), sorted."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if protect_last:
        last = len(scores) - 1
        order = [last] + [i for i in order if i != last]
    return sorted(order[:keep])


def keep_top_per_group(scores: Sequence[float], pattern: mk.Pattern, *, protect_last: bool = False) -> list[int]:
    """``keep_top`` inside every group of the pattern: the N highest-scoring blocks of each group of M."""
    kept: list[int] = []
    for (n, _), rng in zip(pattern, mk.group_ranges(pattern), strict=True):
        local = keep_top([scores[i] for i in rng], n, protect_last=protect_last and rng.stop == len(scores))
        kept.extend(rng.start + i for i in local)
    return sorted(kept)


def oracle_kept(pattern: mk.Pattern) -> list[int]:
    """BK-SDM-style choice: first-half groups keep their first N layers, second-half groups their last N."""
    depth = sum(m for _, m in pattern)
    kept: list[int] = []
    for (n, _), rng in zip(pattern, mk.group_ranges(pattern), strict=True):
        centre = (rng.start + rng.stop - 1) / 2
        kept.extend(rng[:n] if centre < (depth - 1) / 2 else rng[-n:])
    return sorted(kept)


@torch.no_grad()
def sensitivity_scores(gated: nn.Module, stack: BlockStack, state: GateState, batches: list[NoisyBatch],
                       on_progress: ProgressFn | None = None) -> list[float]:
    """Per block: calibration loss with that block skipped minus the full model's."""
    depth = len(stack.blocks(gated))
    state.masks = None
    base = calibration_loss(gated, stack, batches)
    out = []
    for j in range(depth):
        state.masks = _keep_mask(depth, [i for i in range(depth) if i != j])
        out.append(calibration_loss(gated, stack, batches) - base)
        if on_progress is not None:
            on_progress("sensitivity", j + 1, depth)
    state.masks = None
    return out


@torch.no_grad()
def random_best(gated: nn.Module, stack: BlockStack, state: GateState, batches: list[NoisyBatch], keep: int,
                trials: int, seed: int, on_progress: ProgressFn | None = None,
                pattern: mk.Pattern | None = None) -> tuple[list[int], list[float]]:
    """Best of ``trials`` random kept sets by calibration loss; returns (kept, every trial's loss).

    With ``pattern``, every candidate keeps N random blocks of each group of M.
    """
    depth = len(stack.blocks(gated))
    gen = torch.Generator().manual_seed(seed + 777)
    best: list[int] = []
    best_loss = float("inf")
    losses = []
    for i in range(trials):
        if pattern is None:
            kept = sorted(torch.randperm(depth, generator=gen)[:keep].tolist())
        else:
            kept = sorted(rng.start + int(i) for (n, _), rng in zip(pattern, mk.group_ranges(pattern), strict=True)
                          for i in torch.randperm(len(rng), generator=gen)[:n])
        state.masks = _keep_mask(depth, kept)
        loss = calibration_loss(gated, stack, batches)
        losses.append(loss)
        if loss < best_loss:
            best, best_loss = kept, loss
        if on_progress is not None:
            on_progress("random", i + 1, trials)
    state.masks = None
    return best, losses


def choose_baseline(method: str, gated: nn.Module, stack: BlockStack, state: GateState, batches: list[NoisyBatch],
                    pattern: mk.Pattern, *, kept: Sequence[int] = (), trials: int = 16, seed: int = 0,
                    on_progress: ProgressFn | None = None,
                    scope: str = "global") -> tuple[list[int], dict[str, list[float]]]:
    """Kept indices chosen by a baseline ``method``, and the per-block scores it used.

    ``scope``: ``global`` (the best blocks anywhere) or ``groups`` (the best N of every group of M).

    Raises:
        ConfigError: unknown method or invalid explicit indices.
    """
    depth = len(stack.blocks(gated))
    keep = sum(n for n, _ in pattern)

    def top(scores: list[float], protect_last: bool = False) -> list[int]:
        if scope == "groups":
            return keep_top_per_group(scores, pattern, protect_last=protect_last)
        return keep_top(scores, keep, protect_last=protect_last)

    if method == "indices":
        bad = [k for k in kept if not 0 <= k < depth]
        if bad:
            raise ConfigError(f"kept indices {bad} are outside the model's {depth} blocks", where="kept",
                              fix=f"use indices in 0..{depth - 1}")
        return sorted(kept), {}
    if method == "oracle":
        return oracle_kept(pattern), {}
    if method in ("shortgpt", "flux-lite"):
        bi, mse = block_io_scores(gated, stack, state, batches)
        if method == "shortgpt":
            return top(bi, protect_last=True), {"block_influence": bi}
        return top(mse), {"io_mse": mse}
    if method == "sensitivity":
        sens = sensitivity_scores(gated, stack, state, batches, on_progress)
        return top(sens), {"loss_increase": sens}
    if method == "random":
        best, losses = random_best(gated, stack, state, batches, keep, trials, seed, on_progress,
                                   pattern=pattern if scope == "groups" else None)
        return best, {"trial_losses": losses}
    raise ConfigError(f"unknown baseline {method!r}", where="method",
                      fix="choose shortgpt, flux-lite, sensitivity, oracle, random or indices")
