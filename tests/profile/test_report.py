"""LatencyReport: JSON round trip, schema validation, device-tool output parsing, Markdown."""

from __future__ import annotations

import json

import pytest

from mobilekit.errors import ConfigError, DeviceError
from mobilekit.profiling.android import (parse_adb_devices, parse_benchmark_model, parse_executor_runner,
                                       parse_thermal)
from mobilekit.profiling.markdown import render_markdown
from mobilekit.profiling.report import LatencyReport, reports_to_json, schema, validate

pytestmark = pytest.mark.xdist_group("profile_artifacts")


@pytest.mark.backend_onnx
def test_round_trip_through_json_file(onnx_report, tmp_path):
    path = onnx_report.write(tmp_path / "r.json")
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # sorted, indented
    back = LatencyReport.read(path)
    assert back == onnx_report
    validate(back.to_dict())
    doc = reports_to_json([onnx_report])
    assert doc["schema_version"] == 1 and doc["reports"][0]["p50_ms"] == onnx_report.p50_ms


@pytest.mark.backend_onnx
def test_schema_rejects_broken_reports_naming_the_field(onnx_report):
    bad = onnx_report.to_dict()
    bad["p50_ms"] = -1.0
    with pytest.raises(ConfigError) as info:
        validate(bad)
    assert info.value.where == "p50_ms"
    bad = onnx_report.to_dict()
    bad["source"] = "guess"
    with pytest.raises(ConfigError) as info:
        validate(bad)
    assert info.value.where == "source"
    bad = onnx_report.to_dict()
    bad["surprise"] = 1
    with pytest.raises(ConfigError):
        validate(bad)


def test_schema_lists_every_field():
    from dataclasses import fields

    assert {f.name for f in fields(LatencyReport)} == set(schema()["properties"])


@pytest.mark.backend_onnx
def test_from_dict_checks_version_and_keys(onnx_report):
    d = onnx_report.to_dict()
    d["schema_version"] = 99
    with pytest.raises(ConfigError) as info:
        LatencyReport.from_dict(d)
    assert "schema_version" in str(info.value)
    d = onnx_report.to_dict()
    d["p51_ms"] = 1.0
    with pytest.raises(ConfigError) as info:
        LatencyReport.from_dict(d)
    assert "p51_ms" in str(info.value)


def test_constructor_validates_source_and_p50():
    with pytest.raises(ConfigError) as info:
        LatencyReport(artifact="a.onnx", format="onnx", runtime="onnxruntime", source="cloud", device={"name": "x"},
                      p50_ms=1.0)
    assert info.value.where == "source"
    with pytest.raises(ConfigError) as info:
        LatencyReport(artifact="a.onnx", format="onnx", runtime="onnxruntime", source="host", device={"name": "x"},
                      p50_ms=float("nan"))
    assert info.value.where == "p50_ms"


# Output shapes printed by the device tools (LiteRT benchmark_model, ExecuTorch executor_runner, adb).
BENCHMARK_MODEL_OUT = """\
INFO: Loaded model /data/local/tmp/mobilekit/convnet.tflite
INFO: Initialized session in 12.5ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=800 first=900 curr=610 min=580 max=1500 avg=640.5 std=40 p5=590 median=620 p95=700

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 2 seconds.
INFO: count=1600 first=615 curr=601 min=570 max=1400 avg=630.25 std=35 p5=585 median=612 p95=690

INFO: Inference timings in us: Init: 12500, First inference: 900, Warmup (avg): 640.5, Inference (avg): 630.25
INFO: Overall peak memory footprint (MB) via periodic monitoring: 7.25
INFO: ============================== Run Order ==============================
INFO: \t             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
INFO: \t     TfLiteXNNPackDelegate\t    0.400\t    0.350\t 60.000%\t 60.000%\t     0.000\t        1\t[delegate_0]
INFO: \t                    MEAN\t    0.150\t    0.120\t 40.000%\t100.000%\t     0.000\t        1\t[mean_1]

"""


def test_parse_benchmark_model_output():
    got = parse_benchmark_model(BENCHMARK_MODEL_OUT)
    assert got["init_ms"] == pytest.approx(12.5)
    assert got["first_inference_ms"] == pytest.approx(0.9)
    assert got["avg_ms"] == pytest.approx(0.63025)
    assert got["count"] == 1600 and got["median_ms"] == pytest.approx(0.612)  # the timed block, not the warm-up
    assert got["min_ms"] == pytest.approx(0.57) and got["std_ms"] == pytest.approx(0.035)
    assert got["peak_memory_mb"] == pytest.approx(7.25)
    assert [o["op"] for o in got["per_op"]] == ["TfLiteXNNPackDelegate", "MEAN"]
    assert got["per_op"][0]["delegated"] and got["per_op"][1]["ms"] == pytest.approx(0.12)


def test_failed_device_tools_raise_device_errors_with_their_output():
    with pytest.raises(DeviceError) as info:
        parse_benchmark_model("ERROR: Failed to allocate tensors!\nERROR: Benchmarking failed.")
    assert "Benchmarking failed" in str(info.value)
    with pytest.raises(DeviceError) as info:
        parse_executor_runner("E 00:00:00.1 executorch:method.cpp:1 Missing operator: aten::foo")
    assert "Missing operator" in str(info.value)


def test_parse_executor_runner_and_adb_outputs():
    got = parse_executor_runner("I 00:00:01.0 executorch:executor_runner.cpp:300] Model executed successfully "
                                "20 time(s) in 50.000000 ms.")
    assert got["count"] == 20 and got["avg_ms"] == pytest.approx(2.5) and got["total_ms"] == pytest.approx(50.0)
    rows = parse_adb_devices("List of devices attached\n37281FDJH00DJ4 device usb:1-1 product:shiba model:Pixel_8 "
                             "device:shiba transport_id:2\nemulator-5554 offline\n\n")
    assert rows[0]["serial"] == "37281FDJH00DJ4" and rows[0]["model"] == "Pixel_8" and rows[1]["state"] == "offline"
    assert parse_thermal("IsStatusOverride: false\nThermal Status: 2\n") == "moderate"
    assert parse_thermal("no thermal HAL") is None


def test_device_report_from_parsed_output_validates():
    got = parse_benchmark_model(BENCHMARK_MODEL_OUT)
    r = LatencyReport(artifact="convnet.tflite", format="tflite", runtime="benchmark_model", source="device",
                      device={"name": "Pixel 8", "os": "android", "android_version": "15", "thermal_state": "none"},
                      p50_ms=got["median_ms"], mean_ms=got["avg_ms"], cold_load_ms=got["init_ms"],
                      stop_reason="fixed", per_op=tuple(got["per_op"]), per_op_source="benchmark_model")
    validate(r.to_dict())


@pytest.mark.backend_onnx
def test_markdown_summary(onnx_report):
    from mobilekit.profiling.budget import Budget, check_budgets

    checks = check_budgets([onnx_report], Budget(host_ms=onnx_report.p50_ms * 1000))
    text = render_markdown([onnx_report], checks=checks,
                           estimates=[{"target": "pixel-8", "model": "convnet", "format": "onnx", "precision": "fp32",
                                       "compute_unit": "cpu", "ms": 0.5, "low_ms": 0.3, "high_ms": 0.8,
                                       "per_layer": [{"name": "conv", "bound": "memory"}]}])
    assert "| convnet.onnx | pixel-8 |" in text
    assert f"{onnx_report.p50_ms:.3f}" in text
    assert "Budget: passed" in text and "✅" in text
    assert "Top ops" in text and "Conv" in text
    assert "1/1 layers memory-bound" in text
