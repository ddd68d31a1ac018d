"""Learnable search end to end: decision, outputs, resume, ΔΦ variants, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train import DepthPruneConfig, prune_depth
from mobilekit.train.tinyfusion.data import DataSource, digits
from tests.train._tf_models import StopTraining, tiny_dit


def _cfg(**kw: object) -> DepthPruneConfig:
    base: dict[str, object] = {"method": "learnable", "pattern": "1:2", "steps": 6, "batch_size": 8, "log_every": 2, "calib_samples": 16,
                               "lora_rank": 2}
    base.update(kw)
    return DepthPruneConfig(**base)  # type: ignore[arg-type]


@pytest.mark.xdist_group("tinyfusion-search")
def test_learnable_prune_end_to_end_writes_a_reloadable_model(tmp_path: Path) -> None:
    import json

    from diffusers import DiTTransformer2DModel

    model = tiny_dit(4)
    seen: list[tuple[str, int, int]] = []
    res = prune_depth(model, "digits", _cfg(), out_dir=tmp_path, on_progress=lambda s, d, t: seen.append((s, d, t)))
    assert len(res.kept) == 2
    assert res.kept[0] in (0, 1) and res.kept[1] in (2, 3)  # one per 1:2 group
    assert len(res.confidences or []) == 2 and all(0.5 <= c <= 1.0 for c in res.confidences or [])
    assert [e["step"] for e in res.log] == [2, 4, 6]
    assert seen[-1] == ("search", 6, 6)
    assert torch.isfinite(torch.tensor(res.calibration_loss))
    record = json.loads((tmp_path / "prune.json").read_text())
    assert record["kept"] == res.kept and record["seed"] == 0 and record["depth_after"] == 2
    assert record["toolchain"]["torch"] and record["config"]["data"]["pattern"] == "1:2"
    assert (tmp_path / "decisions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = DiTTransformer2DModel.from_pretrained(tmp_path / "model").eval()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    y = torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(again(x, timestep=t, class_labels=y).sample,
                                   res.model(x, timestep=t, class_labels=y).sample)
    assert len(model.transformer_blocks) == 4  # caller's model untouched


@pytest.mark.xdist_group("tinyfusion-search")
def test_search_killed_after_k_steps_resumes_to_the_same_result(tmp_path: Path) -> None:
    model = tiny_dit(4)
    cfg = _cfg(checkpoint_every=2)
    full = prune_depth(model, "digits", cfg, out_dir=tmp_path / "a")

    def stop_at_4(stage: str, done: int, total: int) -> None:
        if done == 4:
            raise StopTraining

    with pytest.raises(StopTraining):
        prune_depth(model, "digits", cfg, out_dir=tmp_path / "b", on_progress=stop_at_4)
    assert (tmp_path / "b" / "checkpoints" / "step-00000004.pt").is_file()
    steps: list[int] = []
    resumed = prune_depth(model, "digits", cfg, out_dir=tmp_path / "b", on_progress=lambda s, d, t: steps.append(d))
    assert steps == [5, 6]  # continued where it stopped
    assert resumed.kept == full.kept
    assert resumed.log == full.log  # identical losses, probabilities and decisions


@pytest.mark.parametrize("delta", ["frozen", "full"])
def test_frozen_and_full_delta_variants_run(delta: str) -> None:
    res = prune_depth(tiny_dit(4), "digits", _cfg(steps=2, delta=delta, log_every=1))
    assert len(res.kept) == 2 and len(res.log) == 2


def test_mixed_pattern_keeps_sum_of_n() -> None:
    res = prune_depth(tiny_dit(6), "digits", _cfg(pattern="1:2,2:4", steps=2))
    assert len(res.kept) == 3 and res.kept[0] in (0, 1) and all(k >= 2 for k in res.kept[1:])


def test_pattern_not_dividing_the_depth_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="does not divide the model depth 4") as exc:
        prune_depth(tiny_dit(4), "digits", _cfg(pattern="1:3"))
    assert exc.value.where == "pattern"


def test_unsupported_model_and_bad_data_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="does not know where the blocks"):
        prune_depth(torch.nn.Linear(2, 2), "digits", _cfg())
    wrong = DataSource(torch.zeros(4, 4, 16, 16), None, 0, "wrong")
    with pytest.raises(ConfigError, match=r"shape \(4, 16, 16\) but the model takes \(4, 8, 8\)"):
        prune_depth(tiny_dit(4), wrong, _cfg())
    with pytest.raises(ConfigError, match="cannot use 'nowhere' as training data"):
        prune_depth(tiny_dit(4), "nowhere", _cfg())


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as exc:
        DepthPruneConfig(method="magic")
    assert exc.value.where == "method"
    with pytest.raises(ConfigError) as exc:
        DepthPruneConfig(method="learnable", tau_range=(4.0, 0.0))
    assert exc.value.where == "tau_range"
    cfg = DepthPruneConfig(method="learnable", pattern="2:4", steps=7)
    assert DepthPruneConfig.from_dict(cfg.to_dict()) == cfg


def test_digits_adapt_to_model_input() -> None:
    src = digits((4, 8, 8))
    assert src.x.shape == (1797, 4, 8, 8) and src.num_classes == 10
    assert float(src.x.min()) >= -1.0 - 1e-5 and float(src.x.max()) <= 1.0 + 1e-5
