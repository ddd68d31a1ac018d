"""The PyTorch int8 simulation that refuses, before any conversion, a precision the model cannot hold."""

from __future__ import annotations

import pytest
import torch

import mobilekit
from mobilekit.errors import ConfigError
from mobilekit.quant_sim import scheme_for, simulate


def _outlier_mlp() -> torch.nn.Module:
    """A Linear whose rows each hold one huge weight on a dead input: int8 rounds the rest of every row to 0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64)).eval()
    with torch.no_grad():
        model[0].weight[0] = 0.0
        model[0].bias[0] = 0.0  # input 0 of the second Linear is always 0 ...
        model[2].weight[:, 0] = 500.0  # ... yet it sets every output channel's int8 scale
    return model


def _refs(model, feeds):
    with torch.no_grad():
        return [[model(*f).float().numpy()] for f in feeds]


def test_simulation_leaves_the_model_unchanged_and_names_the_worst_module():
    model = _outlier_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feeds = [(torch.randn(8, 64),), (torch.randn(8, 64),)]
    sim = simulate(model, feeds, _refs(model, feeds), fmt="onnx", precision="int8-dynamic",
                   tolerance={"cosine": 0.98, "psnr_db": 20.0})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sim is not None and sim.modules == 2 and not sim.passed
    assert sim.worst[0].module == "2" and sim.worst[0].op == "Linear"
    assert sim.worst[0].sqnr_db < sim.worst[1].sqnr_db


@pytest.mark.backend_onnx
def test_int8_the_model_cannot_hold_is_refused_before_any_conversion(tmp_path):
    model = _outlier_mlp()
    stages = []
    with pytest.raises(ConfigError) as info:
        mobilekit.export(model, (torch.randn(8, 64),), targets=["pixel-8"], formats=["onnx"],
                         precision="int8-dynamic", out_dir=tmp_path, use_cache=False,
                         on_progress=lambda stage, done, total: stages.append(stage))
    msg = str(info.value)
    assert "before any conversion" in msg and "2 (Linear" in msg and "pixel-8/onnx-int8-dynamic" in msg
    assert "higher precision" in msg
    assert not [s for s in stages if s not in ("trace",)]  # no recipe was started
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.backend_onnx
def test_simulation_predicts_what_onnx_runtime_measures(tmp_path, monkeypatch):
    """Weight-only int8 is deterministic: the simulated and the real artifact's cosine must agree closely."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.GELU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(32 * 8 * 8, 64)).eval()
    with torch.no_grad():
        model[2].weight[:, :, 1, 1] *= 40  # centre taps dominate: weight rounding costs measurably
    x = (torch.randn(1, 3, 8, 8),)
    m = mobilekit.export(model, x, targets=["pixel-8"], formats=["onnx"], precision="int8-weight",
                         out_dir=tmp_path, use_cache=False, tolerances={"int8-weight": {"cosine": 0.0, "psnr_db": 0.0}})
    art = m.artifacts[0]
    note = next(n for n in art.notes if n.startswith("PyTorch int8 simulation"))
    simulated = float(note.split("cosine ")[1].split(",")[0])
    measured = art.parity.cosine
    assert measured < 0.99999  # the case is not trivial: rounding is visible
    assert abs((1 - simulated) - (1 - measured)) < 0.25 * (1 - measured)


def test_schemes_follow_the_converters():
    assert scheme_for("onnx", "int8-dynamic").weight_types == (torch.nn.Linear,)
    assert torch.nn.Conv2d in scheme_for("tflite", "int8-dynamic").act_types
    assert scheme_for("onnx", "int8-weight").linear_block == 32
    assert scheme_for("coreml", "int8-weight").min_elements == 256
    assert scheme_for("onnx", "fp16") is None
    tiny = torch.nn.Sequential(torch.nn.Linear(4, 4))  # 16 weights: ONNX's int8-weight leaves it float
    feeds = [(torch.randn(2, 4),)]
    assert simulate(tiny, feeds, _refs(tiny, feeds), fmt="onnx", precision="int8-weight",
                    tolerance={"cosine": 0.99, "psnr_db": 25.0}) is None


def _outlier_then_wide() -> torch.nn.Module:
    """``_outlier_mlp`` followed by a wide Linear: the outlier layer is 1.5% of the weights."""
    torch.manual_seed(0)
    return torch.nn.Sequential(_outlier_mlp(), torch.nn.ReLU(), torch.nn.Linear(64, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 512)).eval()


def test_float_fallback_keeps_the_one_sensitive_module_float_within_the_weight_budget():
    from mobilekit.quant_sim import float_fallback

    model = _outlier_then_wide()
    feeds = [(torch.randn(8, 64),) for _ in range(3)]
    refs, tol = _refs(model, feeds), {"cosine": 0.99, "psnr_db": 25.0}
    whole = simulate(model, feeds, refs, fmt="tflite", precision="int8-weight", tolerance=tol)
    assert whole is not None and not whole.passed
    fb = float_fallback(model, feeds, refs, fmt="tflite", precision="int8-weight", tolerance=tol)
    assert fb is not None and fb.modules == ("0.2",)  # the outlier Linear, nothing else
    assert fb.weight_fraction == pytest.approx(64 * 64 / (2 * 64 * 64 + 64 * 512 + 512 * 512))
    # held with headroom: half the error the floor allows
    assert 1 - fb.simulation.parity.cosine <= 0.5 * (1 - tol["cosine"]) + 1e-12
    assert "0.2" in fb.describe() and "kept in float" in fb.describe()
    # a budget smaller than that layer leaves nothing to keep: no fallback, the recipe stays refused
    assert float_fallback(model, feeds, refs, fmt="tflite", precision="int8-weight", tolerance=tol,
                          max_fraction=0.01) is None
