"""Each baseline picks what its rule says, on a constructed stack with known block strengths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobilekit.train.tinyfusion import masks as mk
from mobilekit.train.tinyfusion._common import calibration_batches, calibration_loss
from mobilekit.train.tinyfusion.baselines import oracle_kept
from mobilekit.train.tinyfusion.config import DepthPruneConfig
from mobilekit.train.tinyfusion.data import DataSource
from mobilekit.train.tinyfusion.diffusion import NoiseSchedule
from mobilekit.train.tinyfusion.prune import prune_depth
from mobilekit.train.tinyfusion.surgery import build_pruned
from tests.train._tf_models import ScaledResidualStack, scaled_stack_adapter

SCALES = [0.5, 0.01, 0.3, 0.02, 0.4, 0.03]


@pytest.fixture(scope="module")
def case() -> tuple[ScaledResidualStack, DataSource]:
    model = ScaledResidualStack(SCALES).eval()
    x = torch.randn(48, 4, 4, 4, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    return model, DataSource(x, None, 0, "random")


def _run(case: tuple, method: str, **kw: object):  # noqa: ANN202
    model, data = case
    cfg = DepthPruneConfig(method=method, pattern="1:2", calib_samples=32, **kw)
    return prune_depth(model, data, cfg, stack=scaled_stack_adapter())


def _block_io(model: ScaledResidualStack, data: DataSource) -> tuple[list[float], list[float]]:
    batches = calibration_batches(data, NoiseSchedule(1000), 32, 0, None)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for b in model.blocks]
    bi = [0.0] * len(SCALES)
    mse = [0.0] * len(SCALES)
    with torch.no_grad():
        for b in batches:
            seen.clear()
            model(b.x_t)
            for j, (i, o) in enumerate(seen):
                bi[j] += float((1 - F.cosine_similarity(i, o, dim=-1)).mean()) * len(b.x0)
                mse[j] += float(F.mse_loss(i, o)) * len(b.x0)
    for h in hooks:
        h.remove()
    return [v / 32 for v in bi], [v / 32 for v in mse]


def test_shortgpt_drops_lowest_block_influence_but_never_the_last(case: tuple) -> None:
    res = _run(case, "shortgpt")
    bi, _ = _block_io(*case)
    assert res.scores["block_influence"] == pytest.approx(bi, rel=1e-3)
    # strongest blocks are 0, 4, 2 but the last block (5) is protected
    assert res.kept == [0, 4, 5]
    assert len(res.model.blocks) == 3


def test_flux_lite_drops_smallest_input_output_mse(case: tuple) -> None:
    res = _run(case, "flux-lite")
    _, mse = _block_io(*case)
    assert res.scores["io_mse"] == pytest.approx(mse, rel=1e-3)
    assert res.kept == [0, 2, 4]


def test_sensitivity_keeps_blocks_whose_removal_hurts_most(case: tuple) -> None:
    model, data = case
    res = _run(case, "sensitivity")
    stack = scaled_stack_adapter()
    batches = calibration_batches(data, NoiseSchedule(1000), 32, 0, None)
    base = calibration_loss(model, stack, batches)
    rises = []
    for j in range(6):
        rises.append(calibration_loss(build_pruned(model, [i for i in range(6) if i != j], stack), stack, batches) - base)
    assert res.scores["loss_increase"] == pytest.approx(rises, rel=1e-5, abs=1e-7)
    assert res.kept == sorted(sorted(range(6), key=lambda j: -rises[j])[:3])


def test_random_keeps_the_best_of_k_by_calibration_loss(case: tuple) -> None:
    res = _run(case, "random", random_trials=6)
    losses = res.scores["trial_losses"]
    assert len(losses) == 6
    assert res.calibration_loss == pytest.approx(min(losses), rel=1e-6)
    assert len(res.kept) == 3


def test_oracle_matches_bk_sdm_pairs() -> None:
    assert oracle_kept(mk.parse_pattern("1:2", 28)) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27]
    assert oracle_kept(mk.parse_pattern("1:2", 12)) == [0, 2, 4, 7, 9, 11]


def test_explicit_indices(case: tuple) -> None:
    res = _run(case, "indices", kept=(1, 2, 5))
    assert res.kept == [1, 2, 5]
    x = torch.randn(2, 4, 4, 4)
    model = case[0]
    with torch.no_grad():
        ref = model.head(model.blocks[5](model.blocks[2](model.blocks[1](model.inp(x.flatten(2).transpose(1, 2))))))
        torch.testing.assert_close(res.model(x), ref.transpose(1, 2).reshape(2, 4, 4, 4))


def test_group_scope_holds_the_baselines_to_the_n_m_pattern() -> None:
    from mobilekit.errors import ConfigError
    from mobilekit.train.tinyfusion.baselines import keep_top_per_group

    assert keep_top_per_group([5, 4, 1, 2, 3, 0], mk.parse_pattern("1:2", 6)) == [0, 3, 4]
    assert keep_top_per_group([5, 4, 1, 2, 3, 0, 9, 8], mk.parse_pattern("2:4", 8)) == [0, 1, 6, 7]
    # the two strongest blocks share a pair: global sensitivity keeps both, grouped keeps one per pair
    model = ScaledResidualStack([0.5, 0.4, 0.01, 0.02, 0.3, 0.03]).eval()
    x = torch.randn(48, 4, 4, 4, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    data = DataSource(x, None, 0, "random")
    runs = {scope: prune_depth(model, data, DepthPruneConfig(method="sensitivity", pattern="1:2", calib_samples=32,
                                                             baseline_scope=scope), stack=scaled_stack_adapter())
            for scope in ("global", "groups")}
    scores = runs["global"].scores["loss_increase"]
    assert runs["groups"].scores["loss_increase"] == pytest.approx(scores)
    assert len({k // 2 for k in runs["global"].kept}) < 3  # the global choice breaks 1:2 here
    assert runs["groups"].kept == keep_top_per_group(scores, mk.parse_pattern("1:2", 6))
    assert [k // 2 for k in runs["groups"].kept] == [0, 1, 2]
    rnd = prune_depth(model, data, DepthPruneConfig(method="random", pattern="1:2", calib_samples=32, random_trials=5,
                                                    baseline_scope="groups"), stack=scaled_stack_adapter())
    assert [k // 2 for k in rnd.kept] == [0, 1, 2]  # one block of every pair
    with pytest.raises(ConfigError, match="baseline scope"):
        DepthPruneConfig(baseline_scope="local")
