"""Measure the tiny conv net on an attached Android phone (skips without one)."""

from __future__ import annotations

import pytest

from mobilekit.profiling.report import validate


def test_device_info_reports_model_version_and_thermal_state(adb):
    from mobilekit.profiling.android import THERMAL_STATES, device_info

    info = device_info(adb)
    assert info["name"] and info["android_version"]
    assert info["thermal_state"] in (None, *THERMAL_STATES.values())


def test_benchmark_model_on_phone(adb, benchmark_model_bin, convnet_artifacts):
    from mobilekit.profiling.android import profile_android

    if "tflite" not in convnet_artifacts:
        pytest.skip("litert-torch is not installed: pip install 'mobilekit[tflite]'")
    r = profile_android(convnet_artifacts["tflite"], serial=adb.serial, runner=benchmark_model_bin, adb=adb,
                        max_seconds=2, target="pixel-8")
    assert r.source == "device" and r.runtime == "benchmark_model" and r.p50_ms > 0
    assert r.device["serial"] == adb.serial and r.cold_load_ms > 0
    validate(r.to_dict())


def test_executor_runner_on_phone(adb, executor_runner_bin, convnet_artifacts):
    from mobilekit.profiling.android import profile_android

    if "pte" not in convnet_artifacts:
        pytest.skip("executorch is not installed: pip install 'mobilekit[executorch]'")
    r = profile_android(convnet_artifacts["pte"], serial=adb.serial, runner=executor_runner_bin, adb=adb,
                        max_seconds=1)
    assert r.source == "device" and r.runtime == "executor_runner" and r.p50_ms > 0
    validate(r.to_dict())


def test_unknown_serial_is_a_device_error(adb):
    from mobilekit.errors import DeviceError
    from mobilekit.profiling.android import Adb

    with pytest.raises(DeviceError) as info:
        Adb("no-such-serial-000")
    assert adb.serial in str(info.value)  # lists the attached ones
