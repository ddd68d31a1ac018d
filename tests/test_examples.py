"""The examples run as shipped: the build config Gradle and Xcode run, and the Python scripts.

Each runs from a copy of ``examples/`` (as a user's checkout would hold it) through the same
command line the Gradle task and the Xcode build phase use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("examples")]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROOT = EXAMPLES.parent


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "MOBILEKIT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of examples/ and a cache shared by the tests of this module."""
    root = tmp_path_factory.mktemp("app")
    shutil.copytree(EXAMPLES, root / "examples")
    return root


@pytest.fixture(scope="module")
def gradle_run(checkout):
    """The command the Gradle task runs, on examples/mobilekit.toml."""
    junit = checkout / "build" / "mobilekit-junit.xml"
    proc = subprocess.run([sys.executable, "-m", "mobilekit.cli.main", "build", "--config",
                           str(checkout / "examples" / "mobilekit.toml"), "--json", "--junit", str(junit)],
                          env=_env(checkout / "cache"), capture_output=True, text=True, timeout=1500, cwd=checkout)
    return proc, junit


def test_example_config_builds_as_the_gradle_task_runs_it(gradle_run, checkout):
    proc, junit = gradle_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    out = checkout / "build" / "mobilekit"  # `out = "../build/mobilekit"`, relative to the config file
    assert Path(result["out"]).resolve() == out.resolve()
    for model in ("dit", "gan"):
        manifest = json.loads((out / model / "manifest.json").read_text())
        targets = {t for a in manifest["artifacts"] for t in a["targets"]}
        assert targets == {"iphone-15-pro", "pixel-8"}, model
        for a in manifest["artifacts"]:
            assert (out / model / a["path"]).exists()
    dit = json.loads((out / "dit" / "manifest.json").read_text())
    # the iPhone's default format (Core ML) has no int8-dynamic: the plan takes its listed ExecuTorch recipe
    assert any("cannot build int8-dynamic" in n for b in dit["plan"]["builds"] for n in b["notes"])
    assert "plan dit: build" in proc.stderr
    suite = ET.parse(junit).getroot()
    failures = int(suite.get("failures") or 0) + sum(int(s.get("failures") or 0) for s in suite.iter("testsuite"))
    assert failures == 0


def test_example_config_through_the_xcode_build_phase(gradle_run, checkout, tmp_path):
    derived, bundle = tmp_path / "derived", tmp_path / "bundle"
    env = {**_env(checkout / "cache"), "SRCROOT": str(checkout / "examples"), "DERIVED_FILE_DIR": str(derived),
           "TARGET_BUILD_DIR": str(bundle), "UNLOCALIZED_RESOURCES_FOLDER_PATH": "App.app",
           "MOBILEKIT": f"{sys.executable} -m mobilekit.cli.main"}
    proc = subprocess.run(["sh", str(checkout / "examples" / "ios" / "mobilekit-build-phase.sh")], env=env,
                          capture_output=True, text=True, timeout=900, cwd=checkout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    copied = {p.name for p in (bundle / "App.app" / "models").iterdir()}
    assert {"dit-manifest.json", "gan-manifest.json"} <= copied
    assert any(n.endswith(".mlpackage") for n in copied)  # the iPhone's Core ML build
    assert not any(n.startswith("dit-executorch-xnnpack-fp32") for n in copied)  # pixel-8 only


@pytest.mark.parametrize("script,args", [
    ("prune_and_export_dit.py", ["--search-steps", "4", "--recover-steps", "4"]),
    ("adapt_gan_and_export.py", ["--steps", "4"]),
])
def test_python_example_runs(script, args, checkout, tmp_path):
    proc = subprocess.run([sys.executable, str(checkout / "examples" / script), "--out", str(tmp_path / "run"), *args],
                          env=_env(checkout / "cache"), capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity pass" in proc.stdout
    assert (tmp_path / "run" / "export" / "manifest.json").exists()
