"""Sampling-loop parity: a denoiser artifact checked over N scheduler steps in its real runtime."""

from __future__ import annotations

import numpy as np
import pytest

import mobilekit
from mobilekit.errors import ConfigError
from mobilekit.sampling import SAMPLE_TOLERANCES, Sampling, compare_trajectories, reference_trajectory
from tests.fixtures.models import DiTWrapper, tiny_dit, tiny_dit_inputs

pytestmark = pytest.mark.xdist_group("exporting")

NAMES = ["latents", "timestep", "class_labels"]


@pytest.mark.backend_onnx
@pytest.mark.backend_executorch
def test_sampling_loop_runs_in_the_runtimes_and_matches_pytorch(tmp_path):
    model = DiTWrapper(tiny_dit()).eval()
    m = mobilekit.export(model, tiny_dit_inputs(), targets=["pixel-8"], formats=["onnx", "executorch"],
                         precision=["fp32", "int8-dynamic"], out_dir=tmp_path, use_cache=False, input_names=NAMES,
                         sampling=Sampling(steps=4), tolerances={"int8-dynamic": {"cosine": 0.9}})
    by = {a.recipe.name: a.sampling for a in m.artifacts}
    fp32 = by["onnx-fp32"]
    assert fp32.status == "pass" and fp32.steps == 4 and len(fp32.step_psnr_db) == 4 and fp32.cosine > 0.9999
    assert by["executorch-xnnpack-fp32"].status == "pass"
    int8 = by["executorch-xnnpack-int8-dynamic"]
    # quantization error is visible in the loop: lower than fp32's, and recorded per step
    assert int8.psnr_db < fp32.psnr_db and int8.tolerance == SAMPLE_TOLERANCES["int8-dynamic"]
    reread = mobilekit.Manifest.read(tmp_path / "manifest.json")
    assert reread.artifacts[0].sampling == m.artifacts[0].sampling


def test_the_final_sample_decides_even_when_the_first_step_is_close():
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((1, 4, 8, 8)) for _ in range(4)]
    drift = [r + (k + 1) ** 3 * 0.02 * rng.standard_normal(r.shape) for k, r in enumerate(ref)]  # error compounds
    got = compare_trajectories(ref, drift, sampling=Sampling(steps=4), tolerance={"cosine": 0.95, "psnr_db": 20.0})
    assert got.step_psnr_db[0] > 30 and got.step_psnr_db[-1] < got.step_psnr_db[0]
    assert got.status == "fail" and "final sample after 4 ddim steps" in got.reason


def test_sampling_settings_are_validated():
    with pytest.raises(ConfigError, match="unknown sampling scheduler 'heun'"):
        Sampling(scheduler="heun")
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        Sampling(steps=0)
    model = DiTWrapper(tiny_dit()).eval()
    with pytest.raises(ConfigError, match="timestep_input 5 is out of range: the model has 3 inputs"):
        reference_trajectory(model, tiny_dit_inputs(), Sampling(timestep_input=5))
