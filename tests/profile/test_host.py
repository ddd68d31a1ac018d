"""Host measurement with the real runtimes: statistics, per-op times, manifests, crashes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from mobilekit.errors import BackendUnavailableError, ConfigError, RuntimeCrashError
from mobilekit.profiling.host import host_device, profile
from mobilekit.profiling.report import LatencyReport, validate
from mobilekit.profiling.stats import StoppingRule, ci_relative_half_width, cv, median_ci95, percentile, summarize
from tests.profile.conftest import manifest_for, truncate_copy

pytestmark = pytest.mark.xdist_group("profile_artifacts")


# ------------------------------------------------------------------------------------------- statistics

def test_percentile_interpolates_between_order_statistics():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 90) == pytest.approx(3.7)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_median_ci_covers_the_true_median_about_95_percent_of_the_time():
    rng = random.Random(0)
    trials, hits = 400, 0
    for _ in range(trials):
        xs = [rng.lognormvariate(0.0, 0.5) for _ in range(60)]  # true median exp(0) = 1
        lo, hi = median_ci95(xs)
        hits += lo <= 1.0 <= hi
    assert 0.90 <= hits / trials <= 0.995


def test_small_samples_use_the_whole_range():
    assert median_ci95([3.0, 1.0, 2.0]) == (1.0, 3.0)


def test_summary_is_consistent():
    rng = random.Random(1)
    xs = [rng.gauss(10.0, 1.0) for _ in range(500)]
    s = summarize(xs)
    assert s["min_ms"] <= s["ci95_low_ms"] <= s["p50_ms"] <= s["ci95_high_ms"] <= s["max_ms"]
    assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
    assert s["cv"] == pytest.approx(cv(xs))
    assert 0.05 < s["cv"] < 0.15


def test_stopping_rule_converges_on_tight_samples_and_caps_noisy_ones():
    rule = StoppingRule(rel_precision=0.02, min_samples=10, max_seconds=100, max_samples=400)
    rng = random.Random(2)
    tight = [1.0 + rng.uniform(-0.001, 0.001) for _ in range(10)]
    assert rule.should_stop(tight, elapsed_s=0.1) == "converged"
    noisy = [rng.expovariate(1.0) for _ in range(400)]
    assert ci_relative_half_width(noisy[:399]) > 0.02
    assert rule.should_stop(noisy[:399], elapsed_s=0.1) is None
    assert rule.should_stop(noisy, elapsed_s=0.1) == "max_samples"
    assert rule.should_stop(noisy[:7], elapsed_s=200) == "max_seconds"


@pytest.mark.parametrize("kwargs,field", [({"rel_precision": 0.0}, "rel_precision"),
                                          ({"max_seconds": -1}, "max_seconds"),
                                          ({"min_samples": 0}, "min_samples"),
                                          ({"min_samples": 50, "max_samples": 10}, "max_samples")])
def test_stopping_rule_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        StoppingRule(**kwargs)
    assert info.value.where == field


def test_host_device_names_the_cpu():
    dev = host_device()
    assert dev["name"] and dev["name"] != "unknown host"
    if Path("/proc/cpuinfo").exists() and "model name" in Path("/proc/cpuinfo").read_text():
        assert dev["name"] in Path("/proc/cpuinfo").read_text()


# ------------------------------------------------------------------------------------------- real runtimes

def _check_report(r: LatencyReport, path: Path, runtime: str) -> None:
    assert r.source == "host" and r.runtime == runtime and r.artifact == str(path)
    assert len(r.samples_ms) >= 1 and all(x > 0 for x in r.samples_ms)
    assert r.min_ms <= r.p50_ms <= r.max_ms
    assert r.ci95_low_ms <= r.p50_ms <= r.ci95_high_ms
    assert r.stop_reason in ("converged", "max_seconds", "max_samples")
    assert r.converged == (r.stop_reason == "converged")
    if r.converged:
        assert ci_relative_half_width(r.samples_ms) <= 0.02
    assert r.cold_load_ms > 0 and r.first_inference_ms > 0
    assert r.peak_memory_mb > 1
    assert r.artifact_size_bytes == path.stat().st_size
    assert r.device["name"] == host_device()["name"]
    validate(r.to_dict())


@pytest.mark.backend_onnx
def test_onnxruntime_measurement_with_per_op_times(onnx_report, onnx_artifact):
    r = onnx_report
    _check_report(r, onnx_artifact, "onnxruntime")
    assert r.format == "onnx" and r.target == "pixel-8"
    assert r.per_op_source == "onnxruntime-profile"
    ops = {o["op"] for o in r.per_op}
    assert "Conv" in ops
    assert all(o["ms"] >= 0 and o["count"] >= 1 for o in r.per_op)


@pytest.mark.backend_tflite
@pytest.mark.slow
def test_litert_measurement(tflite_artifact):
    r = profile(tflite_artifact, max_seconds=1.0, warmup=2, threads=1)
    _check_report(r, tflite_artifact, "ai-edge-litert")
    assert r.threads == 1 and r.per_op == () and any("per-op" in n for n in r.notes)


@pytest.mark.backend_executorch
@pytest.mark.slow
def test_executorch_measurement_with_etdump_per_op_times(pte_artifact):
    r = profile(pte_artifact, max_seconds=1.0, warmup=2)
    _check_report(r, pte_artifact, "executorch")
    assert r.per_op_source == "etdump"
    delegated = [o for o in r.per_op if o["delegated"]]
    assert delegated, r.per_op  # XNNPACK ops are reported by name
    assert any("Convolution" in o["op"] for o in delegated)


@pytest.mark.backend_onnx
def test_explicit_inputs_are_used_and_wrong_ones_fail_clearly(onnx_artifact):
    r = profile(onnx_artifact, max_seconds=0.3, per_op=False, inputs=[np.ones((1, 3, 16, 16), np.float32)])
    assert r.per_op == () and r.samples_ms
    with pytest.raises(RuntimeCrashError) as info:
        profile(onnx_artifact, max_seconds=0.3, per_op=False, inputs=[np.ones((2, 5), np.float32)])
    assert str(onnx_artifact) in str(info.value)


@pytest.mark.parametrize("fixture", [pytest.param("onnx_artifact", marks=pytest.mark.backend_onnx),
                                     pytest.param("tflite_artifact", marks=pytest.mark.backend_tflite),
                                     pytest.param("pte_artifact", marks=[pytest.mark.backend_executorch,
                                                                         pytest.mark.slow])])
def test_truncated_artifact_raises_naming_the_file(request, fixture, tmp_path):
    good = request.getfixturevalue(fixture)
    bad = truncate_copy(good, tmp_path / f"broken{good.suffix}", 0.4)
    with pytest.raises(RuntimeCrashError) as info:
        profile(bad, max_seconds=0.3, per_op=False, timeout=180)
    assert str(bad.resolve()) in str(info.value) or str(bad) in str(info.value)
    assert "re-export" in str(info.value) or info.value.where


@pytest.mark.backend_onnx
def test_the_caller_survives_a_crash_and_measures_again(onnx_artifact, tmp_path):
    bad = truncate_copy(onnx_artifact, tmp_path / "broken.onnx", 0.3)
    with pytest.raises(RuntimeCrashError):
        profile(bad, max_seconds=0.2, per_op=False, timeout=120)
    assert profile(onnx_artifact, max_seconds=0.2, per_op=False).p50_ms > 0


def test_garbage_bytes_raise_runtime_crash(tmp_path):
    bad = tmp_path / "noise.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RuntimeCrashError) as info:
        profile(bad, max_seconds=0.2, per_op=False, timeout=120)
    assert "noise.onnx" in str(info.value)


def test_missing_file_and_bad_arguments_are_config_errors(tmp_path, onnx_artifact):
    with pytest.raises(ConfigError) as info:
        profile(tmp_path / "nope.onnx")
    assert "nope.onnx" in str(info.value)
    with pytest.raises(ConfigError):
        profile(onnx_artifact, max_seconds=0)
    with pytest.raises(ConfigError):
        profile(onnx_artifact, threads=0)
    with pytest.raises(ConfigError) as info:
        profile(onnx_artifact, target="pixel-88")
    assert "pixel-88" in str(info.value)
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ConfigError):
        profile(other)


def test_coreml_off_macos_is_backend_unavailable(tmp_path):
    import sys

    if sys.platform == "darwin":
        pytest.skip("Core ML runs on macOS")
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    with pytest.raises(BackendUnavailableError) as info:
        profile(pkg)
    assert "macOS" in str(info.value)


def test_pte_delegated_to_a_backend_this_host_lacks_is_refused_before_the_child(tmp_path):
    pytest.importorskip("executorch.runtime")
    from executorch.runtime import Runtime

    if Runtime.get().backend_registry.is_available("CoreMLBackend"):
        pytest.skip("this host's ExecuTorch runtime has Core ML")
    pte = tmp_path / "m.pte"
    # the backend's name straddles the scanner's 16 MiB chunks: found without reading the file whole
    pte.write_bytes(b"\0" * ((1 << 24) - 5) + b"CoreMLBackend" + b"\0" * 64)
    with pytest.raises(BackendUnavailableError) as info:
        profile(pte)
    assert "CoreMLBackend" in str(info.value) and str(pte) in str(info.value)


@pytest.mark.backend_onnx
@pytest.mark.backend_tflite
@pytest.mark.slow
def test_manifest_profiles_every_artifact_and_filters_by_target(onnx_artifact, tflite_artifact, tmp_path):
    mpath = manifest_for([onnx_artifact, tflite_artifact], tmp_path / "out", ["pixel-8", "galaxy-s24"])
    reports = profile(mpath.parent, max_seconds=0.3, per_op=False)
    assert isinstance(reports, list) and [Path(r.artifact).name for r in reports] == ["convnet.onnx", "convnet.tflite"]
    assert [r.target for r in reports] == ["pixel-8", "galaxy-s24"]
    assert all(r.model == "convnet" and r.precision == "fp32" for r in reports)
    only = profile(mpath, target="galaxy-s24", max_seconds=0.3, per_op=False)
    assert [Path(r.artifact).suffix for r in only] == [".tflite"]
    with pytest.raises(ConfigError) as info:
        profile(mpath, target="iphone-15-pro", max_seconds=0.3)
    assert "galaxy-s24" in str(info.value) and "pixel-8" in str(info.value)


@pytest.mark.backend_onnx
def test_mobilekit_profile_is_callable_even_after_submodule_imports(onnx_artifact):
    import mobilekit
    import mobilekit.profiling.report  # noqa: F401  binds the package to mobilekit.profiling

    r = mobilekit.profile(onnx_artifact, max_seconds=0.2, per_op=False)
    assert isinstance(r, LatencyReport) and r.p50_ms > 0


@pytest.mark.backend_onnx
def test_unreachable_precision_stops_at_the_time_limit(onnx_artifact):
    r = profile(onnx_artifact, max_seconds=0.3, rel_precision=1e-6, per_op=False, warmup=0)
    assert r.stop_reason in ("max_seconds", "max_samples") and r.converged is False
    assert r.warmup == 0 and len(r.samples_ms) >= 1
