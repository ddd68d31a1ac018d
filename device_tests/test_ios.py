"""Measure a Core ML artifact on a connected iPhone (skips off macOS or without a phone)."""

from __future__ import annotations

import os
import sys

import pytest

from mobilekit.errors import DeviceError
from mobilekit.profiling.report import validate


def test_off_macos_the_error_says_why(tmp_path):
    if sys.platform == "darwin":
        pytest.skip("this checks the message on non-macOS hosts")
    from mobilekit.profiling.ios import profile_ios

    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    with pytest.raises(DeviceError) as info:
        profile_ios(pkg)
    assert "macOS" in str(info.value) and "Xcode" in str(info.value)


def test_coreml_benchmark_on_iphone(iphone, tmp_path):
    ct = pytest.importorskip("coremltools", reason="pip install 'mobilekit[coreml]'")
    import torch

    from mobilekit.profiling.ios import profile_ios
    from tests.fixtures.models import tiny_convnet

    model, inputs = tiny_convnet()
    ml = ct.convert(torch.export.export(model, inputs), minimum_deployment_target=ct.target.iOS17)
    path = tmp_path / "convnet.mlpackage"
    ml.save(str(path))
    r = profile_ios(path, device=iphone.udid, iterations=20, development_team=os.environ["MOBILEKIT_IOS_TEAM"])
    assert r.source == "device" and r.format == "coreml" and len(r.samples_ms) == 20
    validate(r.to_dict())
