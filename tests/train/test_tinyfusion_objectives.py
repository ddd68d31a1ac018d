"""The paper's objectives as options: VLB term in the search, variance distillation in masked KD.

On: a learned-sigma model's loss has a finite, nonzero variance term whose gradient reaches
only the sigma channels. Off (the default): the loss is the old one, bit for bit. Either way
the option is recorded in the run's config and a resumed run keeps it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mobilekit.errors import ConfigError
from mobilekit.train import DepthPruneConfig, DistillConfig, build_pruned, distill, prune_depth
from mobilekit.train.tinyfusion._common import make_batch, step_generator
from mobilekit.train.tinyfusion.blocks import DiTStack
from mobilekit.train.tinyfusion.data import digits
from mobilekit.train.tinyfusion.diffusion import (NoiseSchedule, diffusion_loss, training_loss, variance_kd_loss,
                                                  vlb_loss)
from mobilekit.train.tinyfusion.distill import _recovery_loss
from tests.train._tf_models import StopTraining, stop_at, tiny_dit, tiny_dit_sigma


def _batch(n: int = 8, seed: int = 0, t0: bool = True):  # noqa: ANN202
    sched = NoiseSchedule(1000)
    b = make_batch(digits((4, 8, 8)), sched, n, step_generator(seed, 0, 0), null_class=None, label_dropout=0.0)
    if t0:  # include t = 0 (decoder NLL) and the last step
        b.t[0], b.t[1] = 0, 999
        b.x_t[:] = sched.add_noise(b.x0, b.noise, b.t)
    return sched, b


def test_vlb_term_is_finite_nonzero_and_trains_only_the_sigma_channels() -> None:
    sched, b = _batch()
    model = tiny_dit_sigma(2)
    with torch.no_grad():
        pred = model(b.x_t, timestep=b.t, class_labels=b.cond).sample
    pred = pred.requires_grad_(True)
    vb = vlb_loss(pred, b.x0, b.x_t, b.t, sched, reduce=False)
    assert torch.isfinite(vb).all() and float(vb.detach().abs().min()) > 0
    total = training_loss(pred, b.noise, b.x0, b.x_t, b.t, sched, "eps+vlb")
    torch.testing.assert_close(total, diffusion_loss(pred, b.noise) + vb.mean())
    total.backward()
    grad = pred.grad
    assert float(grad[:, 4:].abs().sum()) > 0  # sigma channels learn
    # epsilon channels see only the MSE (the mean is stop-gradiented inside the VLB term)
    eps = pred.detach().clone().requires_grad_(True)
    diffusion_loss(eps, b.noise).backward()
    torch.testing.assert_close(grad[:, :4], eps.grad[:, :4], rtol=0, atol=0)


def test_vlb_at_the_true_posterior_variance_is_the_mean_term_only() -> None:
    sched, b = _batch(t0=False)
    b.t.clamp_(min=1)
    b.x_t[:] = sched.add_noise(b.x0, b.noise, b.t)
    # v = -1 selects the posterior variance; eps = true noise gives the true mean: KL = 0
    pred = torch.cat([b.noise, -torch.ones_like(b.noise)], dim=1)
    torch.testing.assert_close(vlb_loss(pred, b.x0, b.x_t, b.t, sched), torch.tensor(0.0), atol=1e-4, rtol=0)


def test_eps_objective_is_the_old_loss_bit_for_bit() -> None:
    sched, b = _batch()
    pred = torch.randn(8, 8, 8, 8)
    assert torch.equal(training_loss(pred, b.noise, b.x0, b.x_t, b.t, sched, "eps"), diffusion_loss(pred, b.noise))
    # recovery with the options off: alpha_kd * MSE(out) + alpha_gt * eps-MSE, exactly as before
    teacher = tiny_dit_sigma(4)
    student = build_pruned(teacher, [1, 2], DiTStack())
    cfg = DistillConfig(mode="kd")
    labels = torch.arange(8) % 10
    b.cond = labels
    loss, gt, kd, _ = _recovery_loss(cfg, DiTStack(), student, teacher, b, sched, 4, [], None, None, 0.0)
    with torch.no_grad():
        p_s = student(b.x_t, timestep=b.t, class_labels=labels).sample
        p_t = teacher(b.x_t, timestep=b.t, class_labels=labels).sample
    old = cfg.alpha_kd * F.mse_loss(p_s, p_t) + cfg.alpha_gt * diffusion_loss(p_s, b.noise)
    assert torch.equal(loss.detach(), old)


def test_variance_kd_is_zero_for_identical_models_and_trains_only_sigma() -> None:
    sched, b = _batch()
    pred_t = torch.randn(8, 8, 8, 8).clamp(-1, 1)
    torch.testing.assert_close(variance_kd_loss(pred_t.clone(), pred_t, b.x_t, b.t, sched), torch.tensor(0.0),
                               atol=1e-6, rtol=0)
    pred_s = (pred_t + 0.3 * torch.randn(8, 8, 8, 8)).requires_grad_(True)
    kl = variance_kd_loss(pred_s, pred_t, b.x_t, b.t, sched)
    assert torch.isfinite(kl) and float(kl) > 0
    kl.backward()
    assert float(pred_s.grad[:, 4:].abs().sum()) > 0 and float(pred_s.grad[:, :4].abs().sum()) == 0.0


def _search_cfg(**kw: object) -> DepthPruneConfig:
    base: dict[str, object] = {"method": "learnable", "pattern": "1:2", "steps": 4, "batch_size": 4, "log_every": 1, "calib_samples": 8,
                               "lora_rank": 2, "search_loss": "eps+vlb", "checkpoint_every": 2}
    base.update(kw)
    return DepthPruneConfig(**base)  # type: ignore[arg-type]


@pytest.mark.xdist_group("tinyfusion-search")
def test_search_with_vlb_is_recorded_and_resumes_with_it(tmp_path: Path) -> None:
    model = tiny_dit_sigma(4)
    cfg = _search_cfg()
    full = prune_depth(model, "digits", cfg, out_dir=tmp_path / "a", device="cpu")
    eps = prune_depth(model, "digits", _search_cfg(search_loss="eps", checkpoint_every=0), device="cpu")
    assert full.log[0]["loss"] > eps.log[0]["loss"]  # same batch, plus a positive VLB term
    record = json.loads((tmp_path / "a" / "prune.json").read_text())
    assert record["config"]["data"]["search_loss"] == "eps+vlb" and record["device"] == "cpu"
    assert DepthPruneConfig.from_dict(record["config"]) == cfg
    with pytest.raises(StopTraining):
        prune_depth(model, "digits", cfg, out_dir=tmp_path / "b", on_progress=stop_at(2), device="cpu")
    ck = torch.load(tmp_path / "b" / "checkpoints" / "step-00000002.pt", map_location="cpu", weights_only=True)
    assert ck["objective"]["search_loss"] == "eps+vlb"
    with pytest.raises(ConfigError, match="search_loss='eps\\+vlb'") as exc:
        prune_depth(model, "digits", _search_cfg(search_loss="eps"), out_dir=tmp_path / "b", device="cpu")
    assert "resume with the same search_loss" in exc.value.fix
    resumed = prune_depth(model, "digits", cfg, out_dir=tmp_path / "b", device="cpu")
    assert resumed.log == full.log and resumed.kept == full.kept


def test_vlb_on_a_model_without_learned_sigma_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs a model that learns its variance") as exc:
        prune_depth(tiny_dit(4), "digits", _search_cfg(checkpoint_every=0, steps=1))
    assert exc.value.where == "search_loss"
    with pytest.raises(ConfigError) as exc:
        DepthPruneConfig(method="learnable", search_loss="vlb")
    assert exc.value.where == "search_loss"


@pytest.mark.xdist_group("tinyfusion-distill")
def test_masked_kd_with_variance_terms_is_recorded_and_resumes_with_them(tmp_path: Path) -> None:
    teacher = tiny_dit_sigma(4)
    student = build_pruned(teacher, [1, 2], DiTStack())
    cfg = DistillConfig(steps=4, batch_size=4, checkpoint_every=1, log_every=1, gt_loss="eps+vlb", kd_variance=True)
    base = DistillConfig(steps=4, batch_size=4, log_every=1)
    kw = {"kept": [1, 2], "groups": [[0, 1], [2, 3]]}
    full = distill(student, teacher, "digits", cfg, out_dir=tmp_path / "a", device="cpu", **kw)
    old = distill(student, teacher, "digits", base, device="cpu", **kw)
    assert full.log[0]["kd"] > old.log[0]["kd"] and full.log[0]["gt"] > old.log[0]["gt"]  # same batch, extra terms
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in full.log)
    rec = json.loads((tmp_path / "a" / "distill.json").read_text())
    assert rec["config"]["data"]["gt_loss"] == "eps+vlb" and rec["config"]["data"]["kd_variance"] is True
    assert rec["device"] == "cpu"
    with pytest.raises(StopTraining):
        distill(student, teacher, "digits", cfg, out_dir=tmp_path / "b", on_progress=stop_at(2), device="cpu", **kw)
    with pytest.raises(ConfigError, match="kd_variance"):
        distill(student, teacher, "digits", DistillConfig(steps=4, batch_size=4, checkpoint_every=1, log_every=1,
                                                          gt_loss="eps+vlb"), out_dir=tmp_path / "b", **kw)
    resumed = distill(student, teacher, "digits", cfg, out_dir=tmp_path / "b", device="cpu", **kw)
    assert resumed.log == full.log
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError) as exc:
        DistillConfig(mode="finetune", kd_variance=True)
    assert exc.value.where == "kd_variance"
