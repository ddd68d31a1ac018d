import numpy as np

from mobilekit.parity import compare, tolerance_for


def test_identical_outputs_pass():
    x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    p = compare([x], [x.copy()], tolerance=tolerance_for("fp32"), runtime="test")
    assert p.status == "pass" and p.max_abs_error == 0 and p.cosine > 0.999999


def test_noise_fails_fp32_but_passes_int8_tolerance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 64))
    y = x + rng.normal(scale=0.01, size=x.shape)
    assert compare([x], [y], tolerance=tolerance_for("fp32"), runtime="t").status == "fail"
    p = compare([x], [y], tolerance=tolerance_for("int8-dynamic"), runtime="t")
    assert p.status == "pass" and 0.99 < p.cosine < 1.0 and 30 < p.psnr_db < 60


def test_shape_and_count_mismatch_fail_with_reason():
    x = np.zeros((2, 3))
    assert "outputs" in compare([x], [x, x], tolerance=tolerance_for("fp32"), runtime="t").reason
    assert "shape" in compare([x], [np.zeros(7)], tolerance=tolerance_for("fp32"), runtime="t").reason


def test_nan_output_fails():
    x = np.ones((3,))
    y = x.copy()
    y[1] = np.nan
    assert compare([x], [y], tolerance=tolerance_for("int8-static"), runtime="t").status == "fail"


def test_overrides_apply():
    assert tolerance_for("int8-static", {"int8-static": {"cosine": 0.5}})["cosine"] == 0.5
