"""Per-layer LoRA rank search under a parameter budget.

E²GAN says only that a "simple yet effective rank search" picks per-layer ranks; the
procedure is unpublished, so this is our own design: **gradient-spectrum allocation**.

1. On the new concept's (subset of) pairs, compute the gradient G_l of the L1
   reconstruction loss with respect to each crucial layer's weight at the base model
   (reshaped to [out, in·kh·kw]; one full-batch gradient, accumulated in chunks).
2. A LoRA update of rank r on layer l can follow at most the best rank-r approximation of
   -G_l; to first order a step of size η along it lowers the loss by η·Σ_{i≤r} σ_{l,i}²
   (σ: singular values of G_l). So the *marginal gain* of the r-th rank unit of layer l is
   σ_{l,r}², and it costs c_l = in·kh·kw + out parameters.
3. Choose the ranks that maximise the total captured energy Σ_l Σ_{i≤r_l} σ_{l,i}² with
   Σ_l r_l·c_l ≤ budget and r_l ≤ ``max_rank``: a multiple-choice knapsack, solved exactly
   by dynamic programming over the budget (``allocate_ranks``).

It costs one forward/backward pass over the data plus one SVD per layer; no proxy
fine-tunes. Layers whose gradient carries little energy get rank 0 (no LoRA). The
benchmark (benchmarks/e2gan_bench.py) compares it with uniform and random ranks
(``random_ranks``) at equal budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit.errors import BudgetError, ConfigError
from mobilekit.train.e2gan.lora import layer_lora_cost, lora_targets

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RankSearchConfig:
    """Settings of the gradient-spectrum rank search.

    Attributes:
        budget: LoRA parameters to spend (elements), summed over layers.
        max_rank: highest rank any one layer may get.
        chunk_size: images per forward/backward pass while accumulating the gradient.
        max_samples: at most this many pairs are used for the gradient.
        version: config schema version.
    """

    budget: int
    max_rank: int = 16
    chunk_size: int = 8
    max_samples: int = 64
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("budget", "max_rank", "chunk_size", "max_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}", where=f"RankSearchConfig.{name}")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a dict."""
        return asdict(self)


@dataclass(frozen=True)
class RankSearchResult:
    """Outcome of a rank search.

    Attributes:
        ranks: module path -> rank (layers with rank 0 omitted).
        spent: LoRA parameters the ranks use (elements).
        budget: the budget (elements).
        energy: module path -> squared singular values of its gradient (first ``max_rank``).
        costs: module path -> parameters per rank unit.
    """

    ranks: dict[str, int]
    spent: int
    budget: int
    energy: dict[str, list[float]]
    costs: dict[str, int]


def allocate_ranks(energy: dict[str, Sequence[float]], costs: dict[str, int], budget: int,
                   max_rank: int) -> dict[str, int]:
    """Choose per-layer ranks maximising the captured gradient energy within ``budget``.

    Solves the multiple-choice knapsack exactly by dynamic programming over the budget:
    layer l at rank r costs ``r·costs[l]`` and is worth ``Σ_{i≤r} energy[l][i-1]``.
    Costs are divided by their greatest common divisor first; O(layers × max_rank ×
    budget / gcd) time.

    Args:
        energy: module path -> non-increasing marginal gains (σ_1², σ_2², ...).
        costs: module path -> parameters per rank unit.
        budget: parameters available.
        max_rank: per-layer cap.

    Returns:
        module path -> rank, only layers with rank ≥ 1.
    """
    import math

    import numpy as np

    names = [n for n in energy if len(energy[n]) and costs[n] <= budget]
    if not names:
        return {}
    unit = 0
    for n in names:
        unit = math.gcd(unit, int(costs[n]))
    cap = budget // unit
    neg = -np.inf
    dp = np.full(cap + 1, neg)
    dp[0] = 0.0
    choices = []
    for n in names:
        c = int(costs[n]) // unit
        values = np.concatenate([[0.0], np.cumsum(np.asarray(energy[n], dtype=np.float64))])
        best = dp.copy()
        arg = np.zeros(cap + 1, dtype=np.int16)
        for r in range(1, min(max_rank, len(energy[n])) + 1):
            if r * c > cap:
                break
            cand = np.full(cap + 1, neg)
            cand[r * c:] = dp[:cap + 1 - r * c] + values[r]
            better = cand > best + 1e-15
            best = np.where(better, cand, best)
            arg = np.where(better, r, arg)
        dp = best
        choices.append(arg)
    b = int(np.argmax(dp))
    ranks: dict[str, int] = {}
    for n, arg in zip(reversed(names), reversed(choices)):
        r = int(arg[b])
        if r:
            ranks[n] = r
            b -= r * (int(costs[n]) // unit)
    return dict(sorted(ranks.items()))


def uniform_ranks(model: nn.Module, budget: int, patterns: Sequence[str] | None = None) -> dict[str, int]:
    """The same rank on every target layer: the largest r whose total fits ``budget``.

    Raises:
        BudgetError: even rank 1 on every layer exceeds the budget.
    """
    mods = dict(model.named_modules())
    names = lora_targets(model, patterns)
    per_rank = sum(layer_lora_cost(mods[n]) for n in names)
    r = budget // per_rank
    if r < 1:
        raise BudgetError(f"budget {budget} is below rank 1 on all {len(names)} layers ({per_rank} parameters)",
                          where="uniform_ranks(budget)", fix=f"raise the budget to at least {per_rank}")
    return {n: int(r) for n in names}


def random_ranks(model: nn.Module, budget: int, *, seed: int = 0, max_rank: int = 16,
                 patterns: Sequence[str] | None = None) -> dict[str, int]:
    """Random per-layer ranks spending ``budget``: the control for the rank search (E²GAN's "random ranks").

    Rank units go one at a time to a layer drawn uniformly among those that are under
    ``max_rank`` and still fit the remaining budget, until none fits; so the parameters left
    unspent are fewer than the cheapest layer's rank unit, i.e. the budget is spent to within
    one rank step, like the uniform and searched allocations it is compared with.

    Raises:
        BudgetError: the budget cannot buy rank 1 on any layer.
    """
    mods = dict(model.named_modules())
    costs = {n: layer_lora_cost(mods[n]) for n in lora_targets(model, patterns)}
    if min(costs.values()) > budget:
        raise BudgetError(f"budget {budget} cannot buy rank 1 on any layer (cheapest costs {min(costs.values())})",
                          where="random_ranks(budget)", fix=f"raise the budget to at least {min(costs.values())}")
    gen = torch.Generator().manual_seed(seed)
    ranks = dict.fromkeys(costs, 0)
    left = budget
    while True:
        open_ = [n for n, c in costs.items() if c <= left and ranks[n] < max_rank]
        if not open_:
            break
        n = open_[int(torch.randint(len(open_), (1,), generator=gen))]
        ranks[n] += 1
        left -= costs[n]
    return {n: r for n, r in sorted(ranks.items()) if r}


def layer_gradients(model: nn.Module, names: Sequence[str], sources: torch.Tensor, targets: torch.Tensor,
                    text_embeds: torch.Tensor, *, chunk_size: int = 8,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Mean-loss gradients of ``names``' weights, reshaped to [out, fan_in]; ``model`` is left unchanged.

    Args:
        model: the base generator.
        names: module paths of Conv2d/Linear layers.
        sources, targets: [N, 3, H, W] in [-1, 1].
        text_embeds: [N, T, D] or [T, D] (shared by all samples).
        chunk_size: images per pass.
        loss_fn: loss(output, target); default L1.
    """
    loss_fn = loss_fn or (lambda o, t: F.l1_loss(o, t))
    mods = dict(model.named_modules())
    weights = [mods[n].weight for n in names]
    flags = [w.requires_grad for w in weights]
    grads = [torch.zeros_like(w) for w in weights]
    n = sources.shape[0]
    was_training = model.training
    model.eval()
    try:
        for w in weights:
            w.requires_grad_(True)
        for i in range(0, n, chunk_size):
            s, t = sources[i:i + chunk_size], targets[i:i + chunk_size]
            emb = text_embeds[i:i + chunk_size] if text_embeds.ndim == 3 else text_embeds.expand(s.shape[0], -1, -1)
            loss = loss_fn(model(s, emb.detach()), t) * (s.shape[0] / n)
            gs = torch.autograd.grad(loss, weights)
            for acc, g in zip(grads, gs):
                acc += g
    finally:
        for w, f in zip(weights, flags):
            w.requires_grad_(f)
        model.train(was_training)
    return {name: g.reshape(g.shape[0], -1) for name, g in zip(names, grads)}


def search_ranks(model: nn.Module, sources: torch.Tensor, targets: torch.Tensor, text_embeds: torch.Tensor,
                 config: RankSearchConfig, *, patterns: Sequence[str] | None = None) -> RankSearchResult:
    """Search per-layer LoRA ranks for a new concept under ``config.budget`` (see module docstring).

    Args:
        model: the frozen base generator (not modified).
        sources, targets: the concept's pairs [N, 3, H, W] in [-1, 1].
        text_embeds: the concept's text embedding, [T, D] or [N, T, D].
        config: budget and caps.
        patterns: LoRA target regexes (default: the model's crucial layers).

    Returns:
        The ranks and the per-layer gradient spectra behind them.

    Raises:
        BudgetError: the budget cannot buy rank 1 on any layer.

    Example:
        >>> res = search_ranks(gen, src, tgt, emb, RankSearchConfig(budget=20_000))  # doctest: +SKIP
    """
    names = lora_targets(model, patterns)
    mods = dict(model.named_modules())
    costs = {n: layer_lora_cost(mods[n]) for n in names}
    if min(costs.values()) > config.budget:
        raise BudgetError(f"budget {config.budget} cannot buy rank 1 on any layer (cheapest costs "
                          f"{min(costs.values())})", where="RankSearchConfig.budget",
                          fix=f"raise the budget to at least {min(costs.values())}")
    k = min(config.max_samples, sources.shape[0])
    emb = text_embeds[:k] if text_embeds.ndim == 3 else text_embeds
    grads = layer_gradients(model, names, sources[:k], targets[:k], emb, chunk_size=config.chunk_size)
    energy = {}
    for name, g in grads.items():
        s = torch.linalg.svdvals(g.double())
        energy[name] = [float(v) for v in (s[:config.max_rank] ** 2)]
    ranks = allocate_ranks(energy, costs, config.budget, config.max_rank)
    spent = sum(costs[n] * r for n, r in ranks.items())
    logger.info("rank search: %d/%d layers get LoRA, %d of %d parameters", len(ranks), len(names), spent,
                config.budget)
    return RankSearchResult(ranks, spent, config.budget, energy, costs)
