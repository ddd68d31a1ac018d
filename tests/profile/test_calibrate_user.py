"""Calibration on the user's own reports: a real host measurement refits the estimate toward it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobilekit.errors import ConfigError
from mobilekit.estimation import calibrate, estimate
from mobilekit.estimation.calibration_store import load_device_calibration, store_path
from mobilekit.estimation.host import measure_host
from mobilekit.profiling.report import LatencyReport
from tests.fixtures.models import tiny_convnet, tiny_dit, tiny_dit_inputs, tiny_gan

pytestmark = pytest.mark.xdist_group("profile_artifacts")

CONVNET = "tests.fixtures.models:tiny_convnet"


@pytest.fixture(scope="module")
def host_report_file(onnx_report: LatencyReport, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest's real ONNX Runtime measurement of the tiny conv net on this host, as its JSON file."""
    return onnx_report.write(tmp_path_factory.mktemp("reports") / "convnet.json")


def _phone_report(path: Path, model: str, fmt: str, ms: float) -> Path:
    """A report as `mobilekit profile --device` writes one for a Pixel 8."""
    return LatencyReport(artifact=f"{model}.{fmt}", format=fmt, runtime="benchmark_model", source="device",
                         device={"name": "Google Pixel 8", "os": "Android 14"}, target="pixel-8", model=model,
                         precision="fp32", p50_ms=ms).write(path)


def test_host_report_moves_the_estimate_toward_the_measurement(host_report_file: Path, tmp_path: Path) -> None:
    measured = LatencyReport.read(host_report_file).p50_ms
    res = calibrate([host_report_file], store=tmp_path, models=CONVNET, precision="fp32")
    row = res.rows[0]
    assert res.device == "host" and res.written and res.path == store_path("host", tmp_path) and res.path.is_file()
    assert row.measured_ms == measured and row.family == "cpu/fp32"
    assert abs(row.after_ms - measured) < abs(row.before_ms - measured)
    assert res.median_error_after < res.median_error_before
    assert row.held_out_ms is None and res.median_error_held_out is None  # one model: nothing to hold out

    stored = load_device_calibration("host", tmp_path)
    assert stored is not None and stored.families["cpu/fp32"].n == 1
    fam = stored.families["cpu/fp32"]
    assert fam.params != fam.shipped and fam.band is None
    # physical bounds: never faster than the measured peak, no fixed cost above a whole inference
    assert fam.params.eff_compute <= 1.0 + 1e-9 and fam.params.fixed_ms <= measured

    model, x = tiny_convnet()
    host = measure_host(threads=LatencyReport.read(host_report_file).threads)
    after = estimate(model, x, target=host, format="onnx", precision="fp32", calibration=tmp_path)
    before = estimate(model, x, target=host, format="onnx", precision="fp32", calibration=False)
    assert abs(after.ms - measured) < abs(before.ms - measured)
    assert after.calibration is not None and after.calibration["reports"] == 1
    assert after.roofline["params_from"] == "your calibration" and before.calibration is None
    # one report is too few for a band of its own: the shipped band, and the estimate says so
    assert after.calibration["band"] == "shipped" and after.roofline["band_from"] == before.roofline["band_from"]
    assert any("calibrated on 1 of your host report" in n for n in after.notes)
    assert after.low_ms / after.ms == pytest.approx(before.low_ms / before.ms)


def test_enough_reports_give_a_band_from_their_own_residuals(tmp_path: Path) -> None:
    specs = {"convnet": tiny_convnet(), "gan": tiny_gan(), "dit": (tiny_dit(), tiny_dit_inputs())}
    files = []
    for name, (model, x) in specs.items():
        for fmt in ("onnx", "tflite"):
            shipped = estimate(model, x, target="pixel-8", format=fmt, precision="fp32", calibration=False).ms
            # this phone runs everything 2.5x slower than the shipped fit predicts
            files.append(_phone_report(tmp_path / f"{name}-{fmt}.json", name, fmt, 2.5 * shipped))
    res = calibrate(files, store=tmp_path / "store", models=specs)
    assert res.device == "pixel-8" and len(res.rows) == 6
    assert all(r.held_out_ms is not None for r in res.rows)
    assert res.median_error_held_out is not None and res.median_error_held_out < res.median_error_before
    fam = res.calibration.families["cpu/fp32"]
    assert fam.band is not None and fam.band["n"] == 6 and fam.band["archs"] == 3

    model, x = specs["gan"]
    e = estimate(model, x, target="pixel-8", format="onnx", precision="fp32", calibration=tmp_path / "store")
    assert e.calibration is not None and e.calibration["band"] == "own"
    assert e.roofline["band_from"] == "your reports: cpu/fp32" and 0.0 <= e.coverage <= 1.0
    assert e.band_reason is None and e.low_ms <= e.ms <= e.high_ms
    # another unit of the same phone was not calibrated: the shipped fit, untouched
    npu = estimate(model, x, target="pixel-8", compute_unit="npu", precision="fp16", calibration=tmp_path / "store")
    assert npu.calibration is None


# ------------------------------------------------------------------------------------------ refusals

def _bad(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("name,data,where", [
    ("garbage.json", "not json {", "garbage.json"),
    ("manifest.json", {"model": "m", "artifacts": []}, "manifest.json"),
    ("partial.json", {"artifact": "a.onnx", "format": "onnx", "runtime": "onnxruntime", "source": "host",
                      "device": {}}, "partial.json:p50_ms"),
    ("extra.json", {"artifact": "a.onnx", "format": "onnx", "runtime": "onnxruntime", "source": "host",
                    "device": {}, "p50_ms": 1.0, "latency": 2}, "extra.json:LatencyReport"),
    ("estimate.json", {"artifact": "a.onnx", "format": "onnx", "runtime": "x", "source": "estimate", "device": {},
                       "p50_ms": 1.0, "model": "gan-tiny", "precision": "fp32"}, "estimate.json:source"),
    ("nokia.json", {"artifact": "a.tflite", "format": "tflite", "runtime": "benchmark_model", "source": "device",
                    "device": {"name": "Nokia 3310"}, "p50_ms": 1.0, "model": "gan-tiny", "precision": "fp32"},
     "nokia.json:device"),
    ("nomodel.json", {"artifact": "a.onnx", "format": "onnx", "runtime": "onnxruntime", "source": "host",
                      "device": {}, "p50_ms": 1.0, "precision": "fp32"}, "nomodel.json:model"),
    ("noprec.json", {"artifact": "a.onnx", "format": "onnx", "runtime": "onnxruntime", "source": "host",
                     "device": {}, "p50_ms": 1.0, "model": "gan-tiny"}, "noprec.json:precision"),
    ("zero.json", {"artifact": "a.onnx", "format": "onnx", "runtime": "onnxruntime", "source": "host",
                   "device": {}, "p50_ms": 0.0, "model": "gan-tiny", "precision": "fp32"}, "zero.json:p50_ms"),
])
def test_bad_reports_are_refused_before_any_work_naming_file_and_field(
        tmp_path: Path, host_report_file: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: object,
        where: str) -> None:
    def no_work(*_a: object, **_k: object) -> None:
        raise AssertionError("a model was loaded before every report was checked")

    monkeypatch.setattr("mobilekit.spec.load_spec", no_work)
    good = LatencyReport.read(host_report_file).with_(precision="fp32")
    bad = _bad(tmp_path, name, data)
    with pytest.raises(ConfigError) as info:
        calibrate([good, bad], store=tmp_path / "store", models={"convnet.onnx": CONVNET})
    assert info.value.where is not None and info.value.where.endswith(where)
    assert str(bad) in str(info.value) and info.value.fix
    assert not (tmp_path / "store").exists()


def test_reports_of_two_devices_are_refused(tmp_path: Path, host_report_file: Path) -> None:
    phone = _phone_report(tmp_path / "phone.json", "gan-tiny", "tflite", 3.0)
    with pytest.raises(ConfigError, match="2 devices") as info:
        calibrate([host_report_file, phone], store=tmp_path, models=CONVNET, precision="fp32")
    assert "--device" in (info.value.fix or "")


def test_a_report_whose_model_cannot_be_rebuilt_is_refused(tmp_path: Path) -> None:
    report = _phone_report(tmp_path / "r.json", "no_such_package.models:build", "tflite", 3.0)
    with pytest.raises(ConfigError, match="cannot rebuild model") as info:
        calibrate([report], store=tmp_path / "store")
    assert info.value.where == f"{report}:model" and "--model" in (info.value.fix or "") + str(info.value)
    assert not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------------ CLI

def _cli(args: list[str]):
    from typer.testing import CliRunner

    from mobilekit.cli.main import app

    return CliRunner().invoke(app, ["calibrate", *args])


def test_cli_dry_run_writes_nothing_and_shows_before_after(host_report_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = _cli([str(host_report_file), "--model", CONVNET, "--precision", "fp32", "--store", str(store), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "measured ms" in res.stdout and "before ms" in res.stdout and "after ms" in res.stdout
    assert "median |error|" in res.stdout and "before ->" in res.stdout
    assert "dry run" in res.stderr
    assert not store.exists() or not any(store.iterdir())


def test_cli_json_then_reset(host_report_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = _cli([str(host_report_file), "--model", f"convnet.onnx={CONVNET}", "--precision", "fp32",
                "--store", str(store), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["written"] and Path(doc["path"]).is_file()
    assert doc["median_error_after"] < doc["median_error_before"]
    assert doc["rows"][0]["measured_ms"] == LatencyReport.read(host_report_file).p50_ms

    res = _cli(["--reset", "--device", "host", "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "removed" in res.stderr and not Path(doc["path"]).exists()
    assert load_device_calibration("host", store) is None
    res = _cli(["--reset", "--device", "host", "--store", str(store)])
    assert res.exit_code == 0 and "no calibration" in res.stderr


def test_cli_estimate_uses_the_stored_calibration_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mobilekit.builtins import build
    from mobilekit.cli.main import app

    monkeypatch.setenv("MOBILEKIT_CALIBRATION_DIR", str(tmp_path / "store"))
    model, x = build("gan-tiny")
    shipped = estimate(model, x, target="pixel-8", format="tflite", precision="fp32", calibration=False).ms
    # the report names its model as a built-in: calibrate rebuilds it without --model
    report = _phone_report(tmp_path / "r.json", "gan-tiny", "tflite", 3.0 * shipped)
    res = _cli([str(report)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "store" / "pixel-8.json").is_file()
    args = ["estimate", "builtin:gan-tiny", "--target", "pixel-8", "--precision", "fp32"]
    runner = CliRunner()
    doc = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert doc["calibration"]["device"] == "pixel-8" and doc["ms"] > shipped
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0 and "calibrated on 1 of your pixel-8 report" in shown.stderr
    off = json.loads(runner.invoke(app, [*args, "--format", "json", "--no-calibration"]).stdout)
    default_format = estimate(model, x, target="pixel-8", precision="fp32", calibration=False)
    assert off["calibration"] is None and off["ms"] == pytest.approx(default_format.ms)


def test_cli_refusal_is_one_line_with_exit_code(tmp_path: Path) -> None:
    from mobilekit.cli.main import main

    bad = _bad(tmp_path, "manifest.json", {"model": "m", "artifacts": []})
    with pytest.raises(SystemExit) as info:
        main(["calibrate", str(bad), "--store", str(tmp_path / "store")])
    assert info.value.code == ConfigError.exit_code


def test_calibrate_stays_the_function_once_the_fitter_is_imported():
    # the shipped-calibration fitter was a submodule named ``calibrate``: importing it (every estimate
    # does) replaced the package attribute, so ``from mobilekit.estimation import calibrate`` got a module
    import mobilekit.estimation as est
    import mobilekit.estimation.fit  # noqa: F401
    from mobilekit.estimation.device_calibration import calibrate as fn

    assert est.calibrate is fn and callable(est.calibrate)
