"""Masked KD and plain fine-tuning: outlier masking, layer pairing, resume, outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train import DistillConfig, build_pruned, distill
from mobilekit.train.tinyfusion.blocks import DiTStack
from mobilekit.train.tinyfusion.distill import layer_pairs, masked_hidden_mse, outlier_mask
from tests.train._tf_models import tiny_dit


def test_masked_kd_ignores_planted_outliers() -> None:
    gen = torch.Generator().manual_seed(0)
    h_t = torch.randn(2, 16, 32, generator=gen)
    h_s = h_t + 0.01 * torch.randn(2, 16, 32, generator=gen)
    clean = masked_hidden_mse(h_s, h_t, k_sigma=2.0)
    # plant massive activations at the same spots, with very different values on both sides
    s_out, t_out = h_s.clone(), h_t.clone()
    s_out[0, 3, 5], t_out[0, 3, 5] = -500.0, 400.0
    s_out[1, 7, 1], t_out[1, 7, 1] = 300.0, -450.0
    planted = masked_hidden_mse(s_out, t_out, k_sigma=2.0)
    plain = torch.nn.functional.mse_loss(s_out, t_out)
    assert float(plain) > 100.0  # an unmasked loss is dominated by the outliers
    assert float(planted) < 1.5 * float(clean)  # the masked one stays at the clean level
    assert float(planted) < 1e-3
    mask = outlier_mask(t_out, 2.0)
    assert not mask[0, 3, 5] and not mask[1, 7, 1] and mask.float().mean() > 0.9


def test_gradient_of_masked_kd_skips_outliers() -> None:
    h_t = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    h_t[0, 0, 0] = 100.0
    h_s = torch.zeros(1, 8, 8, requires_grad=True)
    masked_hidden_mse(h_s, h_t, 2.0).backward()
    assert h_s.grad is not None and h_s.grad[0, 0, 0] == 0 and h_s.grad.abs().sum() > 0


def test_layer_pairs() -> None:
    groups = [[0, 1], [2, 3], [4, 5], [6, 7]]
    # 1:2 -> student i <-> teacher 2i+1 whichever layer of the pair was kept
    assert layer_pairs(4, 8, kept=[0, 3, 4, 7], groups=groups) == [(0, 1), (1, 3), (2, 5), (3, 7)]
    assert layer_pairs(3, 8, kept=[0, 1, 5], groups=[[0, 1, 2, 3], [4, 5, 6, 7]]) == [(1, 3), (2, 7)]
    assert layer_pairs(3, 6, kept=[0, 2, 5]) == [(0, 1), (1, 4), (2, 5)]
    assert layer_pairs(2, 4) == [(0, 1), (1, 3)]
    with pytest.raises(ConfigError, match="cannot pair a 3-block student with a 4-block teacher"):
        layer_pairs(3, 4)


@pytest.mark.slow
@pytest.mark.xdist_group("tinyfusion-distill")
def test_distill_killed_after_k_steps_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from diffusers import DiTTransformer2DModel

    teacher = tiny_dit(4)
    student = build_pruned(teacher, [1, 2], DiTStack())
    cfg = DistillConfig(steps=5, batch_size=8, checkpoint_every=1, log_every=1)
    kw = {"kept": [1, 2], "groups": [[0, 1], [2, 3]]}
    full = distill(student, teacher, "digits", cfg, out_dir=tmp_path / "a", **kw)
    assert full.pairs == [(0, 1), (1, 3)]
    assert full.log[-1]["beta"] == 0.0 and full.log[0]["beta"] == pytest.approx(1e-2)
    assert full.log[-1]["lr"] == pytest.approx(1e-4) and full.log[0]["lr"] == pytest.approx(2e-4)

    class Stop(Exception):
        pass

    def stop(stage: str, done: int, total: int) -> None:
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        distill(student, teacher, "digits", cfg, out_dir=tmp_path / "b", on_progress=stop, **kw)
    done: list[int] = []
    resumed = distill(student, teacher, "digits", cfg, out_dir=tmp_path / "b",
                      on_progress=lambda s, d, t: done.append(d), **kw)
    assert done == [4, 5]
    assert resumed.log == full.log
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # the student changed, the caller's student did not
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), full.model.state_dict().values()))
    again = DiTTransformer2DModel.from_pretrained(tmp_path / "a" / "model")
    assert again.config.num_layers == 2
    assert (tmp_path / "a" / "distill.json").is_file()


def test_finetune_needs_no_teacher_and_kd_does() -> None:
    student = build_pruned(tiny_dit(4), [0, 3], DiTStack())
    res = distill(student, None, "digits", DistillConfig(mode="finetune", steps=2, batch_size=4, log_every=1))
    assert res.pairs == [] and res.log[-1]["kd"] == 0.0 and res.log[-1]["loss"] == pytest.approx(res.log[-1]["gt"])
    with pytest.raises(ConfigError, match="needs a teacher"):
        distill(student, None, "digits", DistillConfig(mode="kd", steps=1))
