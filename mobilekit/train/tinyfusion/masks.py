"""N:M local layer patterns, their candidate masks, and per-sample hard Gumbel-softmax.

A pattern splits ``L`` consecutive layers into groups of ``M`` layers and keeps exactly
``N`` in each group. Mixed patterns give one ``(N, M)`` per group. Every group owns one row
of learnable logits over its ``C(M, N)`` candidate local masks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from mobilekit.errors import ConfigError

Pattern = tuple[tuple[int, int], ...]


def parse_pattern(pattern: str | Sequence[Sequence[int]], depth: int) -> Pattern:
    """Turn a pattern spec into one ``(N, M)`` per group covering exactly ``depth`` layers.

    Args:
        pattern: ``"1:2"`` (repeated over the depth), ``"2:4,3:4,2:4"`` (one per group, mixed),
            or a list of ``(N, M)`` pairs.
        depth: number of blocks in the model.

    Returns:
        A tuple of ``(N, M)`` pairs whose ``M`` sum to ``depth``.

    Raises:
        ConfigError: malformed, ``N`` not in ``1..M``, or the groups do not cover ``depth``.

    Example:
        >>> parse_pattern("1:2", 6)
        ((1, 2), (1, 2), (1, 2))
    """
    if isinstance(pattern, str):
        pairs: list[tuple[int, int]] = []
        for part in [p.strip() for p in pattern.split(",") if p.strip()]:
            try:
                n_str, m_str = part.split(":")
                pairs.append((int(n_str), int(m_str)))
            except ValueError:
                raise ConfigError(f"pattern entry {part!r} is not N:M", where="pattern",
                                  fix="write e.g. '1:2', '2:4' or a mixed list '2:4,3:4'") from None
    else:
        try:
            pairs = [(int(n), int(m)) for n, m in pattern]
        except (TypeError, ValueError):
            raise ConfigError(f"pattern {pattern!r} is not a list of (N, M) pairs", where="pattern",
                              fix="pass e.g. [(1, 2), (1, 2)]") from None
    if not pairs:
        raise ConfigError("pattern is empty", where="pattern", fix="pass e.g. '1:2'")
    for n, m in pairs:
        if m < 1 or not 1 <= n <= m:
            raise ConfigError(f"pattern group {n}:{m} must have 1 <= N <= M", where="pattern",
                              fix="keep at least one and at most M layers per group")
    if len(pairs) == 1:
        n, m = pairs[0]
        if depth % m:
            raise ConfigError(f"pattern {n}:{m} does not divide the model depth {depth} into groups of {m}",
                              where="pattern",
                              fix=f"choose M dividing {depth}, or give a mixed per-group list whose M sum to {depth}")
        return tuple([(n, m)] * (depth // m))
    total = sum(m for _, m in pairs)
    if total != depth:
        raise ConfigError(f"mixed pattern covers {total} layers but the model has {depth}", where="pattern",
                          fix=f"make the group sizes M sum to {depth}")
    return tuple(pairs)


def group_ranges(pattern: Pattern) -> list[range]:
    """The global layer indices of each group, in order."""
    out, start = [], 0
    for _, m in pattern:
        out.append(range(start, start + m))
        start += m
    return out


def candidate_masks(n: int, m: int) -> torch.Tensor:
    """All ``C(m, n)`` local masks keeping ``n`` of ``m`` layers, shape ``[C, m]`` (float 0/1).

    Rows follow the lexicographic order of ``itertools.combinations(range(m), n)``.

    Example:
        >>> candidate_masks(2, 3).tolist()
        [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    """
    if math.comb(m, n) > 100_000:
        raise ConfigError(f"pattern {n}:{m} has {math.comb(m, n)} candidates per group; too many to learn",
                          where="pattern", fix="use 1:2 or 2:4 (the paper recommends them)")
    rows = []
    for keep in itertools.combinations(range(m), n):
        row = torch.zeros(m)
        row[list(keep)] = 1.0
        rows.append(row)
    return torch.stack(rows)


def hard_gumbel_softmax(logits: torch.Tensor, gumbel: torch.Tensor, tau: float) -> torch.Tensor:
    """Sample one-hot choices per row with straight-through gradients.

    Args:
        logits: ``[C]`` or ``[B, C]`` unnormalised log-probabilities (already scaled).
        gumbel: ``[B, C]`` Gumbel(0, 1) noise, one row per sample.
        tau: temperature (> 0); lower is closer to argmax.

    Returns:
        ``[B, C]``: the hard one-hot in the forward pass, the softmax's gradient backward.
    """
    soft = torch.softmax((logits + gumbel) / tau, dim=-1)
    index = soft.argmax(dim=-1, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return hard - soft.detach() + soft


def sample_gumbel(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise of ``shape`` drawn from ``generator``."""
    u = torch.rand(tuple(shape), generator=generator).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def linear_schedule(start: float, end: float, step: int, total: int) -> float:
    """Linear interpolation from ``start`` (step 0) to ``end`` (step ``total - 1``)."""
    if total <= 1:
        return end
    frac = min(max(step / (total - 1), 0.0), 1.0)
    return start + (end - start) * frac


def sample_layer_masks(gates: Sequence[torch.Tensor], options: Sequence[torch.Tensor], gumbel: Sequence[torch.Tensor],
                       tau: float, scaling: float) -> torch.Tensor:
    """Per-sample layer masks ``[B, L]`` from per-group gate logits (hard forward, STE backward).

    Args:
        gates: one ``[C_g]`` logit row per group.
        options: the candidate masks ``[C_g, M_g]`` of each group.
        gumbel: ``[B, C_g]`` noise per group.
        tau: Gumbel temperature.
        scaling: logit scale applied to the gates (the "one-hotness" of the softmax).
    """
    parts = [hard_gumbel_softmax(g * scaling, noise, tau) @ opt.to(g.dtype)
             for g, opt, noise in zip(gates, options, gumbel, strict=True)]
    return torch.cat(parts, dim=-1)


def decide(gates: Sequence[torch.Tensor], options: Sequence[torch.Tensor], pattern: Pattern,
           scaling: float) -> tuple[list[int], list[float]]:
    """Kept global layer indices (argmax per group) and each group's confidence (max softmax)."""
    kept: list[int] = []
    conf: list[float] = []
    for gate, opt, rng in zip(gates, options, group_ranges(pattern), strict=True):
        probs = torch.softmax(gate.detach().float() * scaling, dim=-1)
        choice = int(probs.argmax())
        conf.append(float(probs[choice]))
        kept.extend(rng[i] for i in torch.nonzero(opt[choice]).flatten().tolist())
    return kept, conf
