"""The export plan: each target gets the formats it runs; only what no target can get is refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import mobilekit
from mobilekit.errors import ConfigError
from mobilekit.plan import plan_exports

FOUR = ["executorch", "coreml", "tflite", "onnx"]


def _builds(plan):
    return {p.recipe.name: sorted(p.targets) for p in plan.builds}


def test_two_phones_four_formats_each_phone_gets_what_it_runs():
    plan = plan_exports(["iphone-15-pro", "pixel-8"], formats=FOUR)
    builds = _builds(plan)
    assert builds["coreml-fp16"] == ["iphone-15-pro"]
    assert builds["onnx-fp32"] == ["iphone-15-pro", "pixel-8"]  # one file serves both
    assert any(r.startswith("executorch-xnnpack") and "pixel-8" in t for r, t in builds.items())
    assert [(s.target, s.format) for s in plan.skipped] == [("pixel-8", "coreml")]
    assert "pixel-8 does not run coreml" in plan.skipped[0].reason
    assert any(line.startswith("skip pixel-8/coreml") for line in plan.describe())


def test_a_format_no_requested_target_runs_is_refused_before_work():
    with pytest.raises(ConfigError, match="no requested target can get format coreml"):
        plan_exports(["pixel-8", "galaxy-s24"], formats=["coreml", "onnx"])


def test_a_precision_the_format_cannot_build_is_refused_with_what_it_can():
    with pytest.raises(ConfigError, match=r"coreml at int8-dynamic.*buildable: coreml-fp32"):
        plan_exports(["iphone-15-pro"], formats=["coreml"], precision="int8-dynamic")


def test_default_format_falls_back_to_the_targets_listed_recipe_for_a_precision_it_cannot_build():
    plan = plan_exports(["iphone-15-pro", "pixel-8"], precision=["fp32", "int8-dynamic"])
    builds = _builds(plan)
    assert builds["coreml-fp32"] == ["iphone-15-pro"]
    assert builds["executorch-xnnpack-int8-dynamic"] == ["iphone-15-pro", "pixel-8"]
    (dyn,) = [p for p in plan.builds if p.recipe.name == "executorch-xnnpack-int8-dynamic"]
    assert "default format coreml cannot build int8-dynamic" in dyn.notes[0]


def test_export_records_the_plan_in_the_manifest(tmp_path):
    from tests.fixtures.models import tiny_convnet

    model, inputs = tiny_convnet()
    m = mobilekit.export(model, inputs, targets=["iphone-15-pro", "pixel-8"], formats=["coreml", "onnx"],
                         precision="fp32", out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert {a.recipe.name for a in m.artifacts} == {"coreml-fp32", "onnx-fp32"}
    assert m.plan["skipped"][0]["target"] == "pixel-8"
    again = mobilekit.Manifest.read(tmp_path / "out")
    assert again.plan == m.plan


def test_cli_prints_the_plan_before_exporting(tmp_path):
    from mobilekit.cli.main import app

    result = CliRunner().invoke(app, ["export", "builtin:gan-tiny", "-t", "iphone-15-pro", "-t", "pixel-8",
                                      "-f", "coreml", "-f", "onnx", "-p", "fp32", "-o", str(tmp_path / "o")],
                                env={"MOBILEKIT_CACHE_DIR": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "plan: build onnx-fp32 for iphone-15-pro, pixel-8" in text
    assert "plan: skip pixel-8/coreml" in text


def test_a_format_falls_back_to_another_delegate_the_target_runs():
    plan = plan_exports(["iphone-15-pro"], formats=["executorch"], precision="int8-dynamic")
    (only,) = plan.builds
    assert only.recipe.name == "executorch-xnnpack-int8-dynamic"  # the iPhone's ExecuTorch default is Core ML
    assert "executorch-coreml cannot build int8-dynamic" in only.notes[0]
    assert not plan.skipped


def test_cli_terminal_shows_the_plan_and_results_without_library_noise(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MOBILEKIT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("MOBILEKIT_VERBOSITY", None)
    proc = subprocess.run([sys.executable, "-m", "mobilekit.cli.main", "export", "builtin:gan-tiny", "-t",
                           "iphone-15-pro", "-f", "coreml", "-f", "tflite", "-f", "executorch", "-f", "onnx", "-p", "fp32",
                           "-o", str(tmp_path / "o")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "plan: build coreml-fp32 for iphone-15-pro" in proc.stderr
    for noise in ("Running MIL", "INFO:", "absl::InitializeLog", "oneDNN", "ops/s]", "CoreMLPartitioner",
                  "torchvision is not installed", "Unable to import `torchao`"):
        assert noise not in proc.stderr, noise
