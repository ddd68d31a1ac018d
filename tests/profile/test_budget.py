"""Budgets: limits pass and fail as they should; the CLI exits non-zero and writes JUnit XML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from mobilekit.errors import BudgetError, ConfigError
from mobilekit.profiling.budget import Budget, check_budgets, enforce, junit_xml, write_junit

pytestmark = pytest.mark.xdist_group("profile_artifacts")


def test_budget_validates_its_fields():
    with pytest.raises(ConfigError) as info:
        Budget(host_ms=-3)
    assert info.value.where == "host_ms"
    with pytest.raises(ConfigError) as info:
        Budget(phone_ms_by_target={"pixel-8": 0})
    assert info.value.where == "phone_ms[pixel-8]"
    with pytest.raises(ConfigError) as info:
        Budget(host_ms=3, stat="p42")
    assert info.value.where == "stat"
    assert Budget().empty and not Budget(size_mb=1).empty and not Budget(phone_ms_by_target={"pixel-8": 3}).empty


@pytest.mark.backend_onnx
def test_latency_size_and_memory_limits(onnx_report):
    r = onnx_report
    loose = check_budgets([r], Budget(host_ms=r.p50_ms * 2, size_mb=r.artifact_size_bytes * 2 / 2**20,
                                      memory_mb=r.memory_delta_mb + 100))
    assert [c.status for c in loose] == ["pass", "pass", "pass"]
    assert [c.metric for c in loose] == ["latency_p50_ms", "artifact_size_mb", "memory_delta_mb"]
    enforce(loose)
    tight = check_budgets([r], Budget(host_ms=r.p50_ms / 2, size_mb=r.artifact_size_bytes / 2 / 2**20, stat="p50"))
    assert [c.status for c in tight] == ["fail", "fail"]
    with pytest.raises(BudgetError) as info:
        enforce(tight)
    msg = str(info.value)
    assert "2 budget check(s) failed" in msg and "latency_p50_ms" in msg and "artifact_size_mb" in msg
    assert r.artifact in msg and "int8" in msg  # what, where, fix
    p99 = check_budgets([r], Budget(host_ms=(r.p50_ms + r.p99_ms) / 2, stat="p99"))
    assert p99[0].metric == "latency_p99_ms" and p99[0].status == ("fail" if r.p99_ms > r.p50_ms else "pass")
    # a host measurement is never held to a phone limit, and says where it was measured
    assert check_budgets([r], Budget(phone_ms=r.p50_ms / 100)) == []
    assert "(host, measured)" in loose[0].report and loose[0].source == "host" and loose[0].kind == "host"


@pytest.mark.backend_onnx
def test_unmeasured_values_are_errors_that_fail_unless_allowed(onnx_report):
    r = onnx_report.with_(memory_delta_mb=None)
    checks = check_budgets([r], Budget(memory_mb=1.0))
    assert checks[0].status == "error" and not checks[0].passed and checks[0].value is None
    assert "could not be checked" in checks[0].message and "does not report peak memory" in checks[0].message
    suite = ET.fromstring(junit_xml(checks)).find("testsuite")
    assert (suite.get("errors"), suite.get("failures"), suite.get("skipped")) == ("1", "0", "0")
    assert suite.find("testcase").find("error").get("type") == "NotEvaluated"
    with pytest.raises(BudgetError, match="does not report peak memory"):
        enforce(checks)
    enforce(checks, allow_errors=["memory"])  # allowed explicitly: no exception
    allowed = ET.fromstring(junit_xml(checks, allow_errors=True)).find("testsuite")
    assert (allowed.get("errors"), allowed.get("skipped")) == ("0", "1")
    assert "allowed:" in allowed.find("testcase").find("skipped").get("message")


@pytest.mark.backend_onnx
def test_phone_reports_meet_the_phone_limit_for_their_target(onnx_report):
    phone = onnx_report.with_(source="device", target="pixel-8",
                              device={"name": "Pixel 8", "os": "android", "thermal_state": "none"})
    budget = Budget(host_ms=1e-9, phone_ms=phone.p50_ms * 2, phone_ms_by_target={"pixel-8": phone.p50_ms / 2})
    (check,) = check_budgets([phone], budget)
    assert check.status == "fail" and check.kind == "phone" and check.target == "pixel-8"
    assert check.limit == phone.p50_ms / 2 and "(phone, measured)" in check.report


@pytest.mark.backend_onnx
def test_junit_file(onnx_report, tmp_path):
    checks = check_budgets([onnx_report], Budget(host_ms=onnx_report.p50_ms / 10, size_mb=100))
    path = write_junit(checks, tmp_path / "budget.xml")
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is not None and "EXCEEDS" in cases[0].find("failure").get("message")
    assert cases[1].find("failure") is None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mobilekit.cli.main", "profile", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.backend_onnx
@pytest.mark.slow
def test_cli_budget_fails_with_exit_code_and_junit(onnx_artifact, tmp_path):
    junit, out = tmp_path / "b.xml", tmp_path / "r.json"
    proc = _cli(str(onnx_artifact), "--target", "pixel-8", "--max-seconds", "0.3", "--budget-ms", "0.000001",
                "--junit", str(junit), "--json", str(out), "--no-per-op")
    assert proc.returncode == BudgetError.exit_code, proc.stderr
    assert "BudgetError" in proc.stderr and "latency_p50_ms" in proc.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "1"
    doc = json.loads(out.read_text())
    assert doc["reports"][0]["target"] == "pixel-8" and doc["budget"]["checks"][0]["status"] == "fail"


@pytest.mark.backend_onnx
@pytest.mark.slow
def test_cli_budget_passes_and_writes_every_output(onnx_artifact, tmp_path):
    files = {k: tmp_path / f"r.{k}" for k in ("json", "html", "md", "xml")}
    proc = _cli(str(onnx_artifact), "--max-seconds", "0.3", "--budget-ms", "100000", "--budget-mb", "50",
                "--json", str(files["json"]), "--html", str(files["html"]), "--markdown", str(files["md"]),
                "--junit", str(files["xml"]), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    stdout = json.loads(proc.stdout)
    assert stdout["reports"][0]["runtime"] == "onnxruntime"
    assert all(c["status"] == "pass" for c in stdout["budget"])
    assert ET.parse(files["xml"]).getroot().find("testsuite").get("failures") == "0"
    assert "<svg" in files["html"].read_text() and "convnet.onnx" in files["md"].read_text()
    from mobilekit.profiling.report import validate

    for rep in json.loads(files["json"].read_text())["reports"]:
        validate(rep)


@pytest.mark.slow
def test_cli_corrupt_artifact_exits_with_runtime_crash(tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"TFL3" + bytes(200))
    proc = _cli(str(bad), "--max-seconds", "0.2")
    assert proc.returncode == 6, proc.stderr
    assert "RuntimeCrashError" in proc.stderr and "broken.tflite" in proc.stderr
