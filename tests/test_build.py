"""``mobilekit build``: incremental, budget-gated, and embeddable from Gradle/Xcode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mobilekit.building import build

pytestmark = [pytest.mark.xdist_group("build"), pytest.mark.slow, pytest.mark.backend_onnx]

MODELS_PY = """
import torch

SEED = {seed}

def convnet():
    torch.manual_seed(SEED)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
    return m.eval(), (torch.randn(1, 3, 16, 16),)

def mlp():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    return m.eval(), (torch.randn(2, 32),)
"""

CONFIG = """
[build]
targets = ["pixel-8", "iphone-15-pro"]
formats = ["onnx"]
precisions = ["fp32"]
max_seconds = 0.2
cache_dir = "cache"

[budgets]
host_latency_ms = {latency}
phone_latency_ms = {latency}
size_mb = 5

[models.conv]
spec = "bmodels:convnet"

[models.mlp]
spec = "bmodels:mlp"
precisions = ["fp32", "int8-dynamic"]
"""


@pytest.fixture()
def project(tmp_path, monkeypatch):
    (tmp_path / "bmodels.py").write_text(MODELS_PY.format(seed=0))
    (tmp_path / "mobilekit.toml").write_text(CONFIG.format(latency=1000))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _reload_models():
    sys.modules.pop("bmodels", None)


def test_build_then_rebuild_nothing_then_only_the_changed_model(project):
    _reload_models()
    first = build(project / "mobilekit.toml")
    assert first.ok, [c.message for c in first.failures]
    assert first.exported == 3  # conv fp32, mlp fp32, mlp int8 (each shared by both targets)
    for name in ("build.json", "report.md", "report.html"):
        assert (first.out / name).is_file()
    assert {r.artifact for r in first.reports} == {a.path for m in first.manifests.values() for a in m.artifacts}
    assert {e.estimate.target for e in first.estimates} == {"pixel-8", "iphone-15-pro"}
    assert {c.metric for c in first.checks} == {"artifact_size_mb", "latency_p50_ms"}
    # every artifact: one size check, one host check, one estimate check per target; each says its source
    assert len(first.checks) == 3 * (1 + 1 + 2) and all(c.status == "pass" for c in first.checks)
    assert {(c.kind, c.source, c.target) for c in first.checks if c.kind in ("host", "phone")} == {
        ("host", "host", None), ("phone", "estimate", "pixel-8"), ("phone", "estimate", "iphone-15-pro")}
    assert all(r.report.target is None and r.report.source == "host" for r in first.reports)  # not labelled as a phone

    _reload_models()
    second = build(project / "mobilekit.toml")
    assert second.exported == 0
    assert all(a.cached for m in second.manifests.values() for a in m.artifacts)
    assert all(r.cached for r in second.reports) and all(e.cached for e in second.estimates)

    (project / "bmodels.py").write_text(MODELS_PY.format(seed=7))
    _reload_models()
    third = build(project / "mobilekit.toml")
    assert third.exported == 1
    assert [a.cached for a in third.manifests["conv"].artifacts] == [False]
    assert all(a.cached for a in third.manifests["mlp"].artifacts)


def test_budget_failure_exits_non_zero_with_summary_and_junit(project):
    (project / "mobilekit.toml").write_text(CONFIG.format(latency=0.000001))
    junit = project / "junit.xml"
    env = {**os.environ, "PYTHONPATH": str(project)}
    proc = subprocess.run([sys.executable, "-m", "mobilekit.cli.main", "build", "--junit", str(junit)], cwd=project,
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 7, proc.stderr
    assert "budget(s) exceeded" in proc.stderr and "latency_p50_ms" in proc.stderr
    suite = ET.parse(junit).getroot()
    assert int(suite.get("failures") or suite.find("testsuite").get("failures")) > 0
    data = json.loads((project / "build" / "mobilekit" / "build.json").read_text())
    assert data["ok"] is False
    # build.json keeps each measurement's and estimate's labels beside the report's own fields
    assert data["reports"] and all(r["model"] and r["artifact"] and r["source"] == "host" for r in data["reports"])
    assert data["estimates"] and all(e["target"] in ("pixel-8", "iphone-15-pro") and e["artifact"]
                                     for e in data["estimates"])


def test_xcode_build_phase_copies_ios_artifacts(project, tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "ios" / "mobilekit-build-phase.sh"
    derived, bundle = tmp_path / "derived", tmp_path / "app"
    env = {**os.environ, "PYTHONPATH": str(project), "SRCROOT": str(project), "DERIVED_FILE_DIR": str(derived),
           "TARGET_BUILD_DIR": str(bundle), "UNLOCALIZED_RESOURCES_FOLDER_PATH": "App.app",
           "MOBILEKIT": f"{sys.executable} -m mobilekit.cli.main"}
    proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=900, cwd=project)
    assert proc.returncode == 0, proc.stderr
    copied = sorted(p.name for p in (bundle / "App.app" / "models").iterdir())
    assert "conv-manifest.json" in copied and any(n.startswith("conv-onnx-fp32") for n in copied)
    assert (derived / "mobilekit.stamp").exists()


def _fail_estimates(monkeypatch):
    import mobilekit.estimation as estimation
    from mobilekit.errors import ConfigError

    def broken(*args, **kwargs):
        raise ConfigError("profile pixel-8 has no int8 NPU peak", where="pixel-8")

    monkeypatch.setattr(estimation, "estimate", broken)


def test_a_failed_estimate_is_an_error_check_that_fails_the_build_and_junit(project, monkeypatch):
    from typer.testing import CliRunner

    from mobilekit.cli.main import app

    _reload_models()
    _fail_estimates(monkeypatch)
    junit = project / "junit.xml"
    res = CliRunner().invoke(app, ["build", "--junit", str(junit)])
    assert res.exit_code == 7, res.output
    data = json.loads((project / "build" / "mobilekit" / "build.json").read_text())
    errors = [c for c in data["checks"] if c["status"] == "error"]
    assert data["ok"] is False and len(errors) == 3 * 2  # every artifact × both targets
    assert all("no int8 NPU peak" in c["message"] and c["kind"] == "phone" for c in errors)
    assert "could not be evaluated" in data["verdict"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("errors") == "6" and suite.get("failures") == "0"
    assert all(c.find("error") is not None for c in suite.findall("testcase") if "estimate" in c.get("classname"))
    md = (project / "build" / "mobilekit" / "report.md").read_text()
    assert "⚠️ error" in md and "no int8 NPU peak" in md
    html = (project / "build" / "mobilekit" / "report.html").read_text()
    assert html.count('class="st-error"') == 6 and html.index("Artifacts") < html.index("Budgets")


def test_allowed_errors_keep_the_build_green_but_stay_in_the_report(project, monkeypatch):
    text = (project / "mobilekit.toml").read_text().replace('cache_dir = "cache"',
                                                            'cache_dir = "cache"\nallow_errors = ["phone"]')
    (project / "mobilekit.toml").write_text(text)
    _reload_models()
    _fail_estimates(monkeypatch)
    result = build(project / "mobilekit.toml")
    assert result.ok and "6 allowed error(s)" in result.verdict()
    assert sum(c.status == "error" for c in result.checks) == 6


def test_host_reports_of_single_target_artifacts_carry_no_phone_target(project):
    (project / "mobilekit.toml").write_text(CONFIG.format(latency=1000).replace(
        'targets = ["pixel-8", "iphone-15-pro"]', 'targets = ["pixel-8"]').replace('cache_dir = "cache"',
                                                                                  'cache_dir = "cache3"'))
    _reload_models()
    result = build(project / "mobilekit.toml")
    assert result.reports and all(r.report.target is None and r.report.source == "host" for r in result.reports)


def test_a_failed_host_measurement_is_an_error_check(project, monkeypatch):
    import mobilekit.profiling.host as host
    from mobilekit.errors import RuntimeCrashError

    def crash(*args, **kwargs):
        raise RuntimeCrashError("onnxruntime exited with signal 11", where="conv.onnx")

    _reload_models()
    monkeypatch.setattr(host, "profile", crash)
    (project / "mobilekit.toml").write_text(CONFIG.format(latency=1000).replace('cache_dir = "cache"',
                                                                                 'cache_dir = "cache2"'))
    result = build(project / "mobilekit.toml")
    host_checks = [c for c in result.checks if c.kind == "host"]
    assert not result.ok and len(host_checks) == 3
    assert all(c.status == "error" and "signal 11" in c.message for c in host_checks)


SAMPLING_CONFIG = """
[build]
targets = ["pixel-8"]
formats = ["onnx"]
precisions = ["fp32"]
max_seconds = 0.2
cache_dir = "cache"
measure = false
estimate = false

[models.dit]
spec = "builtin:dit-tiny"
sampling = { steps = 3 }
budgets = { min_sample_psnr_db = 40, min_sample_cosine = 0.9999 }

[models.mlp]
spec = "bmodels:mlp"
budgets = { min_sample_cosine = 0.9 }
"""


def test_sampling_loop_budgets_gate_denoisers_and_name_models_without_a_loop(project):
    (project / "mobilekit.toml").write_text(SAMPLING_CONFIG)
    _reload_models()
    result = build(project / "mobilekit.toml")
    dit = [c for c in result.checks if c.kind == "sampling" and c.report.startswith("dit/")]
    assert [c.status for c in dit] == ["pass", "pass"] and "3 ddim steps" in dit[0].report
    (mlp,) = [c for c in result.checks if c.report.startswith("mlp/")]
    assert mlp.status == "error" and "has no sampling" in mlp.message and not result.ok
    art = result.manifests["dit"].artifacts[0]
    assert art.sampling.steps == 3 and art.sampling.psnr_db >= 40
    assert "after 3 ddim steps" in (project / "build" / "mobilekit" / "report.md").read_text()


CALIBRATED_CONFIG = """
[build]
targets = ["pixel-8"]
formats = ["onnx"]
precisions = ["fp32"]
measure = false
cache_dir = "cache"

[budgets]
phone_latency_ms = 1000

[models.mlp]
spec = "bmodels:mlp"
"""


def test_a_calibration_stored_after_a_build_prices_the_next_one_and_a_stale_one_is_named(
        tmp_path, monkeypatch, caplog):
    from mobilekit.estimation import calibrate
    from mobilekit.estimation.api import ESTIMATOR_REVISION
    from mobilekit.profiling.report import LatencyReport

    store = tmp_path / "store"
    monkeypatch.setenv("MOBILEKIT_CALIBRATION_DIR", str(store))
    (tmp_path / "bmodels.py").write_text(MODELS_PY.format(seed=0))
    (tmp_path / "mobilekit.toml").write_text(CALIBRATED_CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _reload_models()
    first = build(tmp_path / "mobilekit.toml")
    (shipped,) = first.estimates
    assert shipped.estimate.calibration is None
    # the user profiles the built artifact on their Pixel 8: 3x slower than estimated
    (art,) = first.manifests["mlp"].artifacts
    report = LatencyReport(artifact=str(first.out / "mlp" / art.path), format="onnx", runtime="onnxruntime",
                           source="device", device={"name": "Google Pixel 8"}, target="pixel-8",
                           model="bmodels:mlp", precision="fp32", p50_ms=3 * shipped.estimate.ms)
    res = calibrate([report.write(tmp_path / "pixel8.json")])
    assert res.path == store / "pixel-8.json"

    second = build(tmp_path / "mobilekit.toml")
    assert second.exported == 0
    (own,) = second.estimates
    assert not own.cached  # a new calibration invalidates the cached estimate
    # One report against PSEUDO_REPORTS = 1 pseudo-report of prior: when the fixed and per-op costs
    # dominate (a tiny MLP), the ridge refit moves log latency by (a² + b²) / (a² + b² + 1) of the
    # log gap, a + b = 1 being their shares of the estimate: at least 1/3 of log 3 (both equal).
    assert own.estimate.ms >= 3 ** (1 / 3) * 0.99 * shipped.estimate.ms
    assert own.estimate.calibration["device"] == "pixel-8" and own.estimate.calibration["store"] == str(res.path)
    doc = json.loads((second.out / "build.json").read_text())
    assert doc["estimates"][0]["calibration"]["reports"] == 1
    assert doc["estimates"][0]["roofline"]["params_from"] == "your calibration"
    (check,) = [c for c in second.checks if c.kind == "phone"]
    assert "(pixel-8, estimate, your calibration)" in check.report

    # a calibration fitted by another estimator revision is ignored, and the build says which file and why
    data = json.loads(res.path.read_text())
    data["estimator_revision"] = ESTIMATOR_REVISION - 1
    res.path.write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        third = build(tmp_path / "mobilekit.toml")
    (stale,) = third.estimates
    assert stale.estimate.calibration is None and stale.estimate.ms == pytest.approx(shipped.estimate.ms)
    (note,) = [n for n in stale.estimate.notes if "ignored your calibration" in n]
    assert str(res.path) in note and f"revision {ESTIMATOR_REVISION - 1}" in note
    warned = [r.getMessage() for r in caplog.records if "ignored your calibration" in r.getMessage()]
    assert warned == [note]  # once, though both the estimate cache key and the estimate read the store
    doc = json.loads((third.out / "build.json").read_text())
    assert note in doc["estimates"][0]["notes"]
