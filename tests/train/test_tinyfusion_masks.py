"""N:M candidates, per-sample hard Gumbel-softmax, schedules and pattern errors."""

from __future__ import annotations

import math

import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train.tinyfusion import masks as mk


@pytest.mark.parametrize(("n", "m"), [(1, 2), (2, 4), (3, 4), (7, 14), (1, 1)])
def test_candidates_have_exactly_n_ones_and_are_all_distinct(n: int, m: int) -> None:
    cand = mk.candidate_masks(n, m)
    assert cand.shape == (math.comb(m, n), m)
    assert torch.all(cand.sum(dim=1) == n)
    assert len({tuple(r.tolist()) for r in cand}) == cand.shape[0]


def test_candidate_order_is_lexicographic() -> None:
    assert mk.candidate_masks(2, 3).tolist() == [[1, 1, 0], [1, 0, 1], [0, 1, 1]]


@pytest.mark.parametrize("pattern", ["1:2", "2:4", "2:4,3:4,1:4"])
def test_sampled_masks_keep_exactly_n_per_group(pattern: str) -> None:
    depth = 12
    pat = mk.parse_pattern(pattern, depth)
    gen = torch.Generator().manual_seed(0)
    options = [mk.candidate_masks(n, m) for n, m in pat]
    gates = [torch.randn(o.shape[0], generator=gen, requires_grad=True) for o in options]
    batch = 64
    noise = [mk.sample_gumbel((batch, o.shape[0]), gen) for o in options]
    masks = mk.sample_layer_masks(gates, options, noise, tau=1.0, scaling=3.0)
    assert masks.shape == (batch, depth)
    assert set(masks.detach().unique().tolist()) <= {0.0, 1.0}
    for (n, _), rng in zip(pat, mk.group_ranges(pat), strict=True):
        assert torch.all(masks[:, rng.start:rng.stop].detach().sum(dim=1) == n)
    # per-sample: with random logits and noise, samples differ
    assert len({tuple(r.tolist()) for r in masks.detach()}) > 1


def test_dominant_logit_at_low_temperature_samples_its_argmax() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.tensor([0.0, 0.0, 10.0, 0.0, 0.0, 0.0])
    noise = mk.sample_gumbel((500, 6), gen)
    y = mk.hard_gumbel_softmax(logits, noise, tau=0.05)
    assert torch.all(y.argmax(dim=1) == 2)


def test_straight_through_gradient_reaches_logits() -> None:
    logits = torch.zeros(3, requires_grad=True)
    noise = mk.sample_gumbel((4, 3), torch.Generator().manual_seed(0))
    y = mk.hard_gumbel_softmax(logits, noise, tau=1.0)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_linear_schedule_ends() -> None:
    assert mk.linear_schedule(4.0, 0.1, 0, 10) == 4.0
    assert mk.linear_schedule(4.0, 0.1, 9, 10) == pytest.approx(0.1)


def test_decide_picks_argmax_per_group() -> None:
    pat = mk.parse_pattern("1:2", 4)
    options = [mk.candidate_masks(1, 2)] * 2
    kept, conf = mk.decide([torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])], options, pat, scaling=10.0)
    assert kept == [1, 2]
    assert all(c > 0.99 for c in conf)


def test_pattern_that_does_not_divide_the_depth_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="does not divide the model depth 6") as exc:
        mk.parse_pattern("1:4", 6)
    assert exc.value.where == "pattern"
    with pytest.raises(ConfigError, match="covers 8 layers but the model has 6"):
        mk.parse_pattern("1:4,2:4", 6)
    with pytest.raises(ConfigError, match="not N:M"):
        mk.parse_pattern("half", 6)
    with pytest.raises(ConfigError, match="1 <= N <= M"):
        mk.parse_pattern("3:2", 6)


def test_mixed_pattern_parses() -> None:
    assert mk.parse_pattern("2:4,3:4", 8) == ((2, 4), (3, 4))
    assert mk.parse_pattern([(1, 2), (2, 4)], 6) == ((1, 2), (2, 4))
