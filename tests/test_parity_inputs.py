"""Parity over several inputs: held-out inputs by default, user files, calibration kept apart from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mobilekit
from mobilekit.errors import ConfigError, ParityError
from mobilekit.inputs import held_out_inputs, load_batches, random_inputs
from tests.fixtures.models import DiTWrapper, tiny_dit, tiny_dit_inputs

pytestmark = pytest.mark.xdist_group("exporting")


def test_held_out_inputs_keep_shapes_dtypes_and_valid_ranges_but_not_values():
    example = (torch.randn(1, 4, 8, 8) * 3 + 1, torch.tensor([500]), torch.tensor([[3, 7, 1, 9]]),
               torch.zeros(4, 3), torch.ones(2, dtype=torch.bool))
    batches = held_out_inputs(example, 3)
    assert len(batches) == 3
    for b in batches:
        assert [(t.shape, t.dtype) for t in b] == [(t.shape, t.dtype) for t in example]
        assert not torch.equal(b[0], example[0]) and abs(float(b[0].std()) - 3) < 1.0
        assert 0 <= int(b[1]) <= 500 and 1 <= int(b[2].min()) and int(b[2].max()) <= 9
        assert torch.equal(b[3], example[3]) and torch.equal(b[4], example[4])  # constants stay constants
    assert not torch.equal(batches[0][0], batches[1][0])
    assert held_out_inputs(example, 1)[0][0].equal(batches[0][0])  # seeded: the same every run


def test_random_inputs_follow_declared_specs():
    a, b = random_inputs([((2, 3), np.float32), ((4,), np.int64)], seed=1, int_high=10)
    assert a.shape == (2, 3) and a.dtype == np.float32 and b.dtype == np.int64 and 0 <= b.min() and b.max() < 10
    (z,) = random_inputs([((5,), "torch.int32")])
    assert z.dtype == np.int32 and not z.any()  # integers default to 0: valid for every embedding table


def test_load_batches_by_name_by_position_and_along_the_batch_axis(tmp_path):
    example = (torch.zeros(1, 4, 2, 2), torch.zeros(1, dtype=torch.int64))
    names = ["latents", "timestep"]
    lat, ts = np.random.default_rng(0).standard_normal((3, 1, 4, 2, 2)).astype(np.float32), np.arange(3)
    np.savez(tmp_path / "named.npz", latents=lat, timestep=ts)
    np.savez(tmp_path / "positional.npz", input_0=lat[:, 0], input_1=ts)  # [N, 4, 2, 2]: stacked on batch
    for name in ("named.npz", "positional.npz"):
        got = load_batches(tmp_path / name, names, example)
        assert len(got) == 3 and got[2][0].shape == (1, 4, 2, 2) and got[2][1].tolist() == [2]
        assert torch.allclose(got[1][0], torch.from_numpy(lat[1]))
    np.savez(tmp_path / "bad.npz", latents=lat[:, :, :2], timestep=ts)
    with pytest.raises(ConfigError) as info:
        load_batches(tmp_path / "bad.npz", names, example, what="parity inputs")
    assert "parity inputs 'latents' has shape (3, 1, 2, 2, 2), expected [N, 1, 4, 2, 2]" in str(info.value)
    np.savez(tmp_path / "typo.npz", latent=lat, timestep=ts)
    with pytest.raises(ConfigError, match="do not match the model's inputs"):
        load_batches(tmp_path / "typo.npz", names, example)


@pytest.mark.backend_onnx
def test_parity_runs_on_held_out_inputs_by_default(tmp_path):
    model = DiTWrapper(tiny_dit()).eval()
    m = mobilekit.export(model, tiny_dit_inputs(), targets=["pixel-8"], formats=["onnx"], precision="fp32",
                         out_dir=tmp_path, use_cache=False, input_names=["latents", "timestep", "class_labels"])
    p = m.artifacts[0].parity
    assert p.status == "pass" and p.inputs == 4 and p.held_out and p.worst_input in range(4)
    assert p.tolerance == {"cosine": 0.9999, "psnr_db": 60.0}  # the precision's floors, in the manifest


def _scale_sensitive_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()


@pytest.mark.backend_onnx
def test_out_of_range_parity_inputs_catch_what_the_example_alone_misses(tmp_path, monkeypatch):
    """int8-static scales fitted on unit-scale data clip 20× larger inputs: only held-out parity sees it."""
    model, example = _scale_sensitive_mlp(), (torch.randn(4, 32),)
    calibration = held_out_inputs(example, 8, seed=5)
    ok = mobilekit.export(model, example, targets=["pixel-8"], formats=["onnx"], precision="int8-static",
                          calibration=calibration, parity_samples=1, out_dir=tmp_path / "a", use_cache=False)
    assert ok.artifacts[0].parity.status == "pass" and ok.artifacts[0].parity.inputs == 1
    # the PyTorch int8 simulation clips them as the artifact would: refused before any conversion
    with pytest.raises(ConfigError) as info:
        mobilekit.export(model, example, targets=["pixel-8"], formats=["onnx"], precision="int8-static",
                         calibration=calibration, parity_inputs=[(torch.randn(4, 32) * 20,)],
                         out_dir=tmp_path / "b", use_cache=False)
    assert "input 1 of 2" in str(info.value) and "before any conversion" in str(info.value)
    assert not (tmp_path / "b" / "manifest.json").exists()
    monkeypatch.setattr("mobilekit.quant_sim.simulate", lambda *a, **k: None)
    with pytest.raises(ParityError) as info:  # and the runtime sees the same when the artifact is built
        mobilekit.export(model, example, targets=["pixel-8"], formats=["onnx"], precision="int8-static",
                         calibration=calibration, parity_inputs=[(torch.randn(4, 32) * 20,)],
                         out_dir=tmp_path / "c", use_cache=False)
    assert "input 1 of 2" in str(info.value)


@pytest.mark.backend_onnx
def test_calibration_that_holds_a_parity_input_is_refused_before_work(tmp_path):
    model, example = _scale_sensitive_mlp(), (torch.randn(4, 32),)
    with pytest.raises(ConfigError) as info:
        mobilekit.export(model, example, targets=["pixel-8"], formats=["onnx"], precision="int8-static",
                         calibration=[example], out_dir=tmp_path, use_cache=False)
    assert "calibration batch 0 is also parity input 0" in str(info.value) and "in-sample" in str(info.value)
    assert not any(tmp_path.iterdir())
