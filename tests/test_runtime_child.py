"""The child-process runner: a corrupt or truncated artifact is an error, never a dead caller."""

import numpy as np
import pytest
import torch

from mobilekit.errors import ConfigError, RuntimeCrashError
from mobilekit.runtime import run_artifact


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from tests.fixtures.models import tiny_convnet

    model, inputs = tiny_convnet()
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    torch.onnx.export(model, inputs, str(path), dynamo=False, input_names=["x"])
    return path, model, inputs


@pytest.mark.backend_onnx
def test_runs_in_child_and_matches_pytorch(onnx_file):
    path, model, inputs = onnx_file
    out = run_artifact(path, [inputs[0].numpy()])
    np.testing.assert_allclose(out[0], model(*inputs).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".pte"])
def test_truncated_artifact_raises_and_caller_survives(onnx_file, tmp_path, suffix):
    data = onnx_file[0].read_bytes()
    bad = tmp_path / f"broken{suffix}"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(RuntimeCrashError) as info:
        run_artifact(bad, [np.zeros((1, 3, 16, 16), np.float32)], timeout=120)
    assert str(bad) in str(info.value)


def test_unknown_suffix_is_a_config_error(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(b"x")
    with pytest.raises(RuntimeCrashError, match="no runtime for files ending in '.bin'"):
        run_artifact(p, [])
    with pytest.raises(ConfigError):
        from mobilekit.runtime.runners import runtime_name

        runtime_name(p)


def test_native_cause_picks_the_xnnpack_line_from_a_real_executorch_load_failure():
    # stderr of ExecuTorch 1.5.1 loading the zoo's Flux int8-static .pte (XNNPACK refuses a squeeze)
    from mobilekit.runtime.child import _native_cause

    stderr = (
        "[cpuinfo_utils.cpp:87] Failed to open midr file /sys/devices/soc0/image_version\n"
        "[cpuinfo_utils.cpp:125] CPU info and manual query on # of cpus dont match.\n"
        "[XNNCompiler.cpp:1351] Failed to create squeeze node 157 with code: xnn_status_invalid_parameter\n"
        "[XNNPACKBackend.cpp:143] XNNCompiler::compileModel failed: 0x1\n"
        "[method.cpp:128] Init failed for backend XnnpackBackend: 0x1\n")
    assert _native_cause(stderr) == "Failed to create squeeze node 157 with code: xnn_status_invalid_parameter"
    assert _native_cause("[cpuinfo_utils.cpp:87] Failed to open midr file x\n") is None
