"""Per-layer rank search: greedy allocation under a budget, uniform and random ranks, the search on a tiny base."""

from __future__ import annotations

import itertools

import pytest
import torch

from mobilekit.errors import BudgetError
from mobilekit.train.e2gan.lora import attach_lora, LoRAConfig, layer_lora_cost, lora_targets
from mobilekit.train.e2gan.models import E2GANConfig, build_generator
from mobilekit.train.e2gan.rank_search import (RankSearchConfig, allocate_ranks, random_ranks, search_ranks,
                                               uniform_ranks)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_allocation_matches_brute_force_on_a_constructed_case():
    energy = {"a": [9.0, 4.0, 1.0, 0.5], "b": [3.0, 2.9, 2.8, 0.1], "c": [0.2, 0.1, 0.0, 0.0]}
    costs = {"a": 10, "b": 5, "c": 1}
    budget, max_rank = 30, 4
    got = allocate_ranks(energy, costs, budget, max_rank)
    spent = sum(costs[n] * r for n, r in got.items())
    assert spent <= budget

    def gain(r):
        return sum(sum(energy[n][:r[i]]) for i, n in enumerate(energy))

    best = max((r for r in itertools.product(range(5), repeat=3)
                if sum(c * k for c, k in zip(costs.values(), r)) <= budget), key=gain)
    assert gain([got.get(n, 0) for n in energy]) == pytest.approx(gain(best))


def test_allocation_prefers_energy_per_parameter():
    got = allocate_ranks({"big": [1.0, 1.0], "small": [1.0, 1.0]}, {"big": 100, "small": 10}, 20, 8)
    assert got == {"small": 2}


def test_uniform_ranks_fill_the_budget_and_refuse_a_tiny_budget():
    g = build_generator(E2GANConfig.tiny())
    mods = dict(g.named_modules())
    per_rank = sum(layer_lora_cost(mods[n]) for n in lora_targets(g))
    ranks = uniform_ranks(g, 3 * per_rank + 5)
    assert set(ranks.values()) == {3} and set(ranks) == set(lora_targets(g))
    with pytest.raises(BudgetError, match="raise the budget"):
        uniform_ranks(g, per_rank - 1)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_ranks_spend_the_uniform_budget_to_within_one_rank_step(seed):
    g = build_generator(E2GANConfig.tiny())
    mods = dict(g.named_modules())
    costs = {n: layer_lora_cost(mods[n]) for n in lora_targets(g)}
    budget = 2 * sum(costs.values())  # what uniform rank 2 spends exactly
    ranks = random_ranks(g, budget, seed=seed)
    spent = sum(costs[n] * r for n, r in ranks.items())
    assert set(ranks) <= set(costs) and min(ranks.values()) >= 1
    assert budget - min(costs.values()) < spent <= budget
    uniform_spent = sum(costs[n] * r for n, r in uniform_ranks(g, budget).items())
    assert abs(uniform_spent - spent) < max(costs.values())
    assert ranks == random_ranks(g, budget, seed=seed)  # seeded
    assert len(set(ranks.values())) > 1  # not the uniform allocation in disguise


def test_random_ranks_differ_across_seeds_respect_the_cap_and_refuse_a_tiny_budget():
    g = build_generator(E2GANConfig.tiny())
    mods = dict(g.named_modules())
    costs = {n: layer_lora_cost(mods[n]) for n in lora_targets(g)}
    budget = 2 * sum(costs.values())
    assert len({tuple(sorted(random_ranks(g, budget, seed=s).items())) for s in range(4)}) > 1
    capped = random_ranks(g, 10 * sum(costs.values()), seed=0, max_rank=3)
    assert capped == dict.fromkeys(sorted(costs), 3)  # every layer at its cap, the rest left unspent
    with pytest.raises(BudgetError, match="raise the budget"):
        random_ranks(g, min(costs.values()) - 1)


def test_search_respects_budget_and_cap_and_leaves_base_alone():
    g = build_generator(E2GANConfig.tiny()).eval()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    src = torch.rand(6, 3, 32, 32, generator=gen) * 2 - 1
    tgt = src.flip(1)  # a colour-channel swap concept
    res = search_ranks(g, src, tgt, torch.randn(4, 16, generator=gen),
                       RankSearchConfig(budget=1500, max_rank=3, chunk_size=3))
    assert 0 < res.spent <= 1500
    assert res.ranks and max(res.ranks.values()) <= 3
    assert set(res.ranks) <= set(lora_targets(g))
    assert res.spent == sum(res.costs[n] * r for n, r in res.ranks.items())
    for n, e in res.energy.items():
        assert all(a >= b - 1e-12 for a, b in zip(e, e[1:])), n
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())
    assert not any(p.grad is not None for p in g.parameters())
    # the searched ranks are what LoRA gets
    from peft.tuners.lora import LoraLayer

    model = attach_lora(g, LoRAConfig(ranks=res.ranks))
    placed = {n: int(m.r["default"]) for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert placed == res.ranks
    with pytest.raises(BudgetError):
        search_ranks(g, src, tgt, torch.zeros(4, 16), RankSearchConfig(budget=3))
