"""Image parity: an image-to-image model's output compared as the 8-bit pictures a user sees."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mobilekit
from mobilekit.artifact import Artifact
from mobilekit.build_config import ModelEntry
from mobilekit.errors import ConfigError
from mobilekit.images import ImageOutput, ImageParity, compare_images, to_uint8
from mobilekit.parity import IMAGE_TOLERANCES, Parity
from mobilekit.profiling.budget import Budget
from mobilekit.recipe import Recipe

pytestmark = pytest.mark.xdist_group("exporting")


class ConvTanh(torch.nn.Module):
    """A tiny image-to-image net ending in tanh, like a GAN generator."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(x) * 3)


def test_levels_are_counted_on_the_rounded_8_bit_picture():
    image = ImageOutput(low=0.0, high=1.0)
    ref = np.full((1, 3, 4, 4), 100 / 255)
    shifted = ref + 3 / 255  # three levels brighter everywhere
    got = compare_images([[ref]], [[shifted]], image=image, tolerance={"psnr_db": 40.0})
    assert got.max_level_diff == 3 and got.levels_off_pct == pytest.approx(100.0)
    assert got.psnr_db == pytest.approx(20 * math.log10(255 / 3)) and got.status == "fail"  # 38.6 dB < 40
    assert "8-bit image PSNR 38.6 dB on input 0" in got.reason
    # a float difference that rounds away leaves the picture identical
    tiny = ref + 0.1 / 255
    same = compare_images([[ref]], [[tiny]], image=image, tolerance={"psnr_db": 40.0})
    assert same.status == "pass" and same.psnr_db == 999.0 and same.max_level_diff == 0


def test_the_worst_input_decides_and_values_outside_the_range_clip():
    image = ImageOutput()  # [-1, 1]
    assert to_uint8(np.array([-3.0, -1.0, 0.0, 1.0, 5.0]), image).tolist() == [0, 0, 128, 255, 255]
    good, bad = np.zeros((1, 3, 8, 8)), np.zeros((1, 3, 8, 8))
    off = bad.copy()
    off[0, 0, 0, 0] = 0.5  # one value 63 levels off: 0.5 -> 191, 0 -> 128
    got = compare_images([[good], [bad]], [[good], [off]], image=image, tolerance={"psnr_db": 30.0})
    assert got.worst_input == 1 and got.inputs == 2 and got.max_level_diff == 63


def test_image_output_is_read_from_config_values_and_bad_ones_are_refused():
    assert ImageOutput.parse(True) == ImageOutput()
    assert ImageOutput.parse([0, 1]) == ImageOutput(low=0.0, high=1.0)
    assert ImageOutput.parse("0,255") == ImageOutput(low=0.0, high=255.0)
    assert ImageOutput.parse({"output": 1, "range": [0, 1]}) == ImageOutput(output=1, low=0.0, high=1.0)
    with pytest.raises(ConfigError, match="range \\[1.0, 0.0\\] is empty"):
        ImageOutput.parse([1, 0])
    with pytest.raises(ConfigError, match="cannot read image output 'bright'"):
        ImageOutput.parse("bright", where="--image-range")


@pytest.mark.backend_onnx
def test_image_parity_runs_on_the_runtime_outputs_and_lands_in_the_manifest(tmp_path):
    model = ConvTanh().eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    m = mobilekit.export(model, (x,), targets=["pixel-8"], formats=["onnx"], precision=["fp32", "int8-static"],
                         out_dir=tmp_path, use_cache=False, image=ImageOutput(),
                         tolerances={"int8-static": {"cosine": 0.5, "psnr_db": 5.0}})
    by = {a.recipe.name: a for a in m.artifacts}
    fp32, int8 = by["onnx-fp32"].images, by["onnx-int8-static"].images
    assert fp32.status == "pass" and fp32.inputs == 4 and fp32.max_level_diff <= 1
    assert fp32.tolerance == IMAGE_TOLERANCES["fp32"]
    # static int8 moves the picture: measurably, and by more than fp32 does
    assert int8.psnr_db < fp32.psnr_db and int8.max_level_diff >= 1
    assert int8.tolerance == IMAGE_TOLERANCES["int8-static"]
    # the numbers are the runtime's own: rerun the artifact and recompute on the example input
    from mobilekit.runtime import run_artifact

    out = run_artifact(tmp_path / by["onnx-int8-static"].path, [x.numpy()])[0]
    ref = model(x).detach().numpy()
    diff = np.abs(to_uint8(out, ImageOutput()).astype(int) - to_uint8(ref, ImageOutput()).astype(int))
    assert diff.max() <= int8.max_level_diff
    reread = mobilekit.Manifest.read(tmp_path / "manifest.json")
    assert {a.path: a.images for a in reread.artifacts} == {a.path: a.images for a in m.artifacts}


def test_builtin_gan_declares_its_image_output():
    loaded = mobilekit.load_spec("builtin:gan-tiny") if hasattr(mobilekit, "load_spec") else None
    if loaded is None:
        from mobilekit.spec import load_spec

        loaded = load_spec("builtin:gan-tiny")
    assert loaded.image == ImageOutput(output=0, low=-1.0, high=1.0)
    out = loaded.model(*loaded.example_inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0  # the declared range holds


def _artifact(images: ImageParity | None) -> Artifact:
    return Artifact(path="g.onnx", targets=("pixel-8",), recipe=Recipe.parse("onnx-int8-static"), sha256="ab",
                    size_bytes=3, inputs=(), outputs=(), export_seconds=0.0,
                    parity=Parity(status="pass", cosine=0.99, psnr_db=30.0), images=images)


def test_image_budget_passes_fails_or_says_why_it_could_not_be_evaluated():
    from mobilekit.building import _check

    entry = ModelEntry(name="gan", spec="builtin:gan-tiny", targets=("pixel-8",))
    budget = Budget(min_image_psnr_db=30.0)
    ok = _check(entry, _artifact(ImageParity(status="pass", psnr_db=34.0)), budget, None, {}, {})
    low = _check(entry, _artifact(ImageParity(status="fail", psnr_db=27.5)), budget, None, {}, {})
    none = _check(entry, _artifact(None), budget, None, {}, {})
    assert [(c.kind, c.status) for c in ok] == [("images", "pass")]
    assert [(c.kind, c.status) for c in low] == [("images", "fail")] and low[0].value == 27.5
    assert [(c.kind, c.status) for c in none] == [("images", "error")]
    assert "declares no image output" in none[0].reason
