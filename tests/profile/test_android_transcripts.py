"""The Android runner's parsers on real benchmark_model / executor_runner / dumpsys transcripts.

Fixtures and where each came from: tests/fixtures/android/SOURCES.md. Expected numbers are read
off the transcripts by eye (benchmark_model prints microseconds; these are ms).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mobilekit.errors import DeviceError
from mobilekit.profiling.android import (parse_benchmark_model, parse_executor_runner, parse_op_profile,
                                       parse_thermal, parse_thermal_service)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "android"
INIT_ONLY_OPS = {"ModifyGraphWithDelegate", "AllocateTensors"}


def _text(name: str) -> str:
    return (FIXTURES / name).read_text()


# fixture: init, first, avg, count, min, max, std (ms), memory init/overall (MB), per-op rows, first per-op row
TIMED = {
    "benchmark_model_2.8_riscv_cpu_opprof_start.txt":
        (17.187, 3512.391, 2950.34, 50, 2727.568, 3189.954, 109.798, 4.21094, 46.0859,
         31, ("CONV_2D", "[MobilenetV1/MobilenetV1/Conv2d_0/Relu6]:0", 60.957, 1, False)),
    "benchmark_model_nightly2021_android_nnapi_fp16.txt":
        (449.051, 128.3, 99.6462, 50, 96.919, 103.964, 1.369, 8.23828, 62.3242, 0, None),
    "benchmark_model_2021_android_gpu_opprof_start_peakmem.txt":
        (1451.507, 11.147, 8.68033, 110, 7.863, 10.688, 0.591, 63.4883, 63.4883,
         1, ("TfLiteGpuDelegateV2", "[Identity]:77", 8.671, 1, True)),
    "benchmark_model_2.15_android_nnapi_synap.txt":
        (66.002, 637.079, 1.88574, 520, 1.171, 9.925, 0.870, 7.40234, 7.83203, 0, None),
    "benchmark_model_2.15_android_timvx_external.txt":
        (25.573, 201.009, 1.09648, 876, 0.810, 6.334, 0.476, 15.4688, 43.2852, 0, None),
    "benchmark_model_tc2_xnnpack_noprof.txt":
        (16.599, 8.539, 6.4795, 2, 6.449, 6.510, 0.030, 8.45312, 10.5898, 0, None),
    "benchmark_model_tc2_xnnpack_opprof_nostart.txt":
        (16.772, 8.781, 7.45497, 67, 6.373, 7.775, 0.256, 8.44922, 10.8789,
         115, ("Convolution (NHWC, QU8) IGEMM", "Delegate/Convolution (NHWC, QU8) IGEMM:0", 0.278, 1, True)),
    "benchmark_model_logcat_android_xnnpack_median.txt":
        (458.883, 2732.148, 2719.85, 10, 2640.862, 3025.403, 105.101, 286.73, 337.0, 0, None),
}


@pytest.mark.parametrize("name", sorted(TIMED))
def test_benchmark_model_transcripts(name):
    init, first, avg, count, lo, hi, std, mem_init, mem_overall, n_ops, first_op = TIMED[name]
    got = parse_benchmark_model(_text(name))
    assert got["init_ms"] == pytest.approx(init)
    assert got["first_inference_ms"] == pytest.approx(first)
    # avg/min/max/std of the timed run, all from its one count= line (not warm-up, not the profiler's)
    assert got["avg_ms"] == pytest.approx(avg) and got["count"] == count
    assert (got["min_ms"], got["max_ms"], got["std_ms"]) == pytest.approx((lo, hi, std))
    assert (got["memory_init_mb"], got["memory_overall_mb"]) == pytest.approx((mem_init, mem_overall))
    assert got["notes"] == []
    assert len(got["per_op"]) == n_ops
    if first_op:
        op = got["per_op"][0]
        assert (op["op"], op["name"], op["count"], op["delegated"]) == (first_op[0], first_op[1], first_op[3],
                                                                        first_op[4])
        assert op["ms"] == pytest.approx(first_op[2])
    assert not INIT_ONLY_OPS & {o["op"] for o in got["per_op"]}


def test_median_and_percentiles_only_when_printed():
    got = parse_benchmark_model(_text("benchmark_model_logcat_android_xnnpack_median.txt"))
    assert got["median_ms"] == pytest.approx(2709.263)
    assert (got["p5_ms"], got["p95_ms"]) == pytest.approx((2640.862, 3025.403))
    assert "median_ms" not in parse_benchmark_model(_text("benchmark_model_2.15_android_nnapi_synap.txt"))


def test_profiler_timings_line_is_not_the_timed_run():
    # The op profiler prints its own "Timings (microseconds): count=67 ... min=6282 max=7683" after the
    # summary; the timed run's line is "count=67 first=7176 curr=7505 min=6373 max=7775 avg=7454.97 std=256".
    got = parse_benchmark_model(_text("benchmark_model_tc2_xnnpack_opprof_nostart.txt"))
    assert got["min_ms"] == pytest.approx(6.373) and got["max_ms"] == pytest.approx(7.775)
    got = parse_benchmark_model(_text("benchmark_model_2.8_riscv_cpu_opprof_start.txt"))
    assert got["min_ms"] == pytest.approx(2727.568) and got["max_ms"] == pytest.approx(3189.954)


@pytest.mark.parametrize("name, init_ops", [
    ("benchmark_model_2.8_riscv_cpu_opprof_start.txt", [("AllocateTensors", 1.356)]),
    ("benchmark_model_2021_android_gpu_opprof_start_peakmem.txt",
     [("ModifyGraphWithDelegate", 1450.744), ("AllocateTensors", 0.016)]),
    ("benchmark_model_nightly2021_android_nnapi_opprof_start.txt",
     [("ModifyGraphWithDelegate", 552.750), ("AllocateTensors", 207.330)]),
    ("benchmark_model_tc2_xnnpack_opprof_nostart.txt",
     [("ModifyGraphWithDelegate", 14.842), ("AllocateTensors", 0.102)]),
])
def test_init_table_is_kept_apart(name, init_ops):
    got = parse_op_profile(_text(name))
    assert [(o["op"], pytest.approx(o["ms"])) for o in got["init_ops"]] == init_ops
    assert not INIT_ONLY_OPS & {o["op"] for o in got["per_op"]}
    assert not INIT_ONLY_OPS & {o["name"].split("/")[0] for o in got["per_op"]}


def test_nnapi_profile_with_start_column_and_partitions():
    ops = parse_op_profile(_text("benchmark_model_nightly2021_android_nnapi_opprof_start.txt"))["per_op"]
    assert len(ops) == 14
    delegates = [o for o in ops if o["op"] == "TfLiteNnapiDelegate"]
    assert [o["ms"] for o in delegates] == pytest.approx([83.750, 16.808, 51.706])  # [avg ms], not [start]/[first]
    assert delegates[0]["name"] == ("[model/tf.math.multiply_23/Mul, model/tf.math.multiply_38/Mul, "
                                    "model/tf.math.multiply_49/Mul]:270")
    assert all(o["delegated"] for o in delegates) and not ops[0]["delegated"]
    assert ops[-1]["op"] == "TRANSPOSE" and ops[-1]["ms"] == pytest.approx(0.146)
    with pytest.raises(DeviceError):  # the author pasted the tables only: no timing summary
        parse_benchmark_model(_text("benchmark_model_nightly2021_android_nnapi_opprof_start.txt"))


def test_op_table_whose_tabs_became_spaces():
    ops = parse_op_profile(_text("benchmark_model_2.15_android_nnapi_opprof_spaces.txt"))["per_op"]
    assert [(o["op"], o["name"], o["ms"], o["count"]) for o in ops] == [
        ("TfLiteNnapiDelegate", "[]:64", pytest.approx(4.011), 1),
        ("RESIZE_NEAREST_NEIGHBOR", "[]:38", pytest.approx(0.058), 1),
        ("TfLiteNnapiDelegate", "[]:65", pytest.approx(2.396), 1)]


def test_xnnpack_op_names_with_spaces_and_last_row():
    ops = parse_op_profile(_text("benchmark_model_tc2_xnnpack_opprof_nostart.txt"))["per_op"]
    gemm = [o for o in ops if o["name"] == "Delegate/Convolution (NHWC, QU8) GEMM:3"]
    assert len(gemm) == 1 and gemm[0]["ms"] == pytest.approx(0.338)
    assert all(o["delegated"] for o in ops if o["name"].startswith("Delegate/"))


def test_failed_benchmark_raises_with_its_output():
    with pytest.raises(DeviceError) as info:
        parse_benchmark_model(_text("benchmark_model_nightly2021_android_nnapi_failed.txt"))
    assert "Benchmarking failed" in str(info.value)


def test_executor_runner_total_only_with_etdump():
    got = parse_executor_runner(_text("executor_runner_xnnpack_etdump_arm64.txt"))
    assert got["count"] == 1 and got["total_ms"] == pytest.approx(2.904883) and got["avg_ms"] == pytest.approx(2.904883)
    assert got["etdump_path"] == "model/linear_model_f32.etdump"
    assert "samples_ms" not in got and "load_ms" not in got
    assert any("per-run" in m for m in got["missing"]) and any("load" in m for m in got["missing"])


def test_executor_runner_load_time_and_iterations():
    got = parse_executor_runner(_text("executor_runner_mv2_iterations.txt"))
    assert got["load_ms"] == pytest.approx(29.49)
    assert got["samples_ms"] == pytest.approx([49252.00]) and got["avg_ms"] == pytest.approx(49252.00)
    assert "etdump_path" not in got


def test_dumpsys_thermalservice():
    text = _text("dumpsys_thermalservice_skia.txt")
    got = parse_thermal_service(text)
    assert got["status"] == 0 and got["state"] == "none" and parse_thermal(text) == "none"
    # the live "Current temperatures from HAL" block; -99.9 (absent power amplifier sensor) skipped
    assert got["temperatures"] == {"TYPE_CPU": 24.0, "TYPE_BATTERY": 24.4, "TYPE_SKIN": 25.3, "TYPE_USB_PORT": 24.2}


# --- the runner against a fake adb (a script that records what it is asked and answers from fixtures) ---

FAKE_ADB = r'''#!{python}
import json, os, shutil, sys
from pathlib import Path
state = Path(os.environ["FAKE_ADB_DIR"])
args = sys.argv[1:]
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
if args[:1] == ["devices"]:
    print("List of devices attached\nR5CT30ABCDEF device usb:1-1 product:husky model:Pixel_8_Pro device:husky")
    sys.exit(0)
args = args[2:] if args[:1] == ["-s"] else args
if args[0] == "push":
    sys.exit(0)
if args[0] == "pull":
    Path(args[2]).write_bytes(b"not a real etdump")
    sys.exit(0)
cmd = args[1]
if cmd.startswith("getprop ro.product.model"):
    print("Pixel 8 Pro")
elif cmd.startswith("getprop ro.build.version.release"):
    print("15")
elif cmd.startswith("getprop"):
    print("")
elif cmd.startswith("dumpsys thermalservice"):
    n = len(list(state.glob("thermal_*")))
    (state / f"thermal_{{n}}").write_text("")
    text = (state / "thermal.txt").read_text()
    print(text if n == 0 else text.replace("Thermal Status: 0", "Thermal Status: 2"))
elif "benchmark_model" in cmd or "executor_runner" in cmd:
    print((state / "runner_out.txt").read_text())
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    import sys

    state = tmp_path / "adb_state"
    state.mkdir()
    (state / "thermal.txt").write_text(_text("dumpsys_thermalservice_skia.txt"))
    script = tmp_path / "adb"
    script.write_text(FAKE_ADB.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_ADB_DIR", str(state))

    def calls():
        import json

        return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]

    return script, state, calls


def test_tflite_run_on_fake_adb(fake_adb, tmp_path):
    from mobilekit.profiling.android import Adb, profile_android
    from mobilekit.profiling.report import validate

    script, state, calls = fake_adb
    (state / "runner_out.txt").write_text(_text("benchmark_model_tc2_xnnpack_opprof_nostart.txt"))
    model, binary = tmp_path / "m.tflite", tmp_path / "benchmark_model"
    model.write_bytes(b"tfl3")
    binary.write_bytes(b"elf")
    r = profile_android(model, runner=binary, adb=Adb(adb=str(script)), threads=4)
    assert r.mean_ms == pytest.approx(7.45497) and r.min_ms == pytest.approx(6.373) and r.p50_ms == pytest.approx(7.45497)
    assert r.cold_load_ms == pytest.approx(16.772) and r.memory_delta_mb == pytest.approx(10.8789)
    assert len(r.per_op) == 115 and not INIT_ONLY_OPS & {o["op"] for o in r.per_op}
    assert r.device["thermal_state"] == "none" and r.device["thermal_state_after"] == "moderate"
    assert r.device["temperatures_c"]["TYPE_SKIN"] == 25.3
    assert any("warmed up" in n for n in r.notes) and any("ModifyGraphWithDelegate 14.842 ms" in n for n in r.notes)
    validate(r.to_dict())
    pushed = [c[4] for c in calls() if c[2:3] == ["push"]]
    assert pushed == ["/data/local/tmp/mobilekit/m.tflite", "/data/local/tmp/mobilekit/benchmark_model"]
    run = next(c[3] for c in calls() if c[2:3] == ["shell"] and "benchmark_model --graph" in c[3])
    assert "--enable_op_profiling=true" in run and "--num_threads=4" in run


def test_pte_with_ptd_pushes_both_and_pulls_the_etdump(fake_adb, tmp_path):
    from mobilekit.profiling.android import Adb, profile_android
    from mobilekit.profiling.report import validate

    script, state, calls = fake_adb
    (state / "runner_out.txt").write_text(_text("executor_runner_xnnpack_etdump_arm64.txt"))
    model, data, binary = tmp_path / "lora.pte", tmp_path / "base.ptd", tmp_path / "executor_runner"
    for f in (model, data, binary):
        f.write_bytes(b"x")
    r = profile_android(model, runner=binary, adb=Adb(adb=str(script)), extra_files=["base.ptd"],
                        etdump_dir=tmp_path / "dumps")
    pushed = [c[4] for c in calls() if c[2:3] == ["push"]]
    assert pushed == ["/data/local/tmp/mobilekit/lora.pte", "/data/local/tmp/mobilekit/base.ptd",
                      "/data/local/tmp/mobilekit/executor_runner"]
    run = next(c[3] for c in calls() if c[2:3] == ["shell"] and "executor_runner --model_path" in c[3])
    assert "--data_path=/data/local/tmp/mobilekit/base.ptd" in run
    assert "--etdump_path=/data/local/tmp/mobilekit/lora.etdump" in run
    pulls = [c[3:] for c in calls() if c[2:3] == ["pull"]]
    assert pulls == [["/data/local/tmp/mobilekit/lora.etdump", str(tmp_path / "dumps" / "lora.etdump")]]
    assert (tmp_path / "dumps" / "lora.etdump").exists()
    assert r.mean_ms == pytest.approx(2.904883) and r.artifact_size_bytes == 2
    assert any("did not print" in n and "load time" in n for n in r.notes)
    validate(r.to_dict())


def test_missing_extra_file_and_onnx_sidecar(tmp_path):
    from mobilekit.errors import ConfigError
    from mobilekit.profiling.android import artifact_files

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    (tmp_path / "m.onnx.data").write_bytes(b"y")
    assert artifact_files(onnx) == [onnx, tmp_path / "m.onnx.data"]
    with pytest.raises(ConfigError):
        artifact_files(tmp_path / "m.pte", ["gone.ptd"])
