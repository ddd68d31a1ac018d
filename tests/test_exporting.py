"""The export pipeline end to end: real converters, real runtimes, the cache, the manifest, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mobilekit
from mobilekit.artifact import Manifest, sha256_of
from mobilekit.errors import ConfigError, ParityError
from tests.fixtures.models import tiny_convnet

pytestmark = pytest.mark.xdist_group("exporting")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def convnet_export(tmp_path_factory, cache_dir):
    model, inputs = tiny_convnet()
    out = tmp_path_factory.mktemp("out")
    manifest = mobilekit.export(model, inputs, targets=["pixel-8", "galaxy-s24"], formats=["onnx", "executorch"],
                                precision="fp32", out_dir=out, cache_dir=cache_dir, model_name="convnet")
    return model, inputs, out, manifest


@pytest.mark.backend_onnx
@pytest.mark.backend_executorch
def test_artifacts_shared_by_targets_are_built_once(convnet_export):
    _, _, out, manifest = convnet_export
    assert len(manifest.artifacts) == 2  # two targets × two formats, one file per format
    for a in manifest.artifacts:
        assert set(a.targets) == {"pixel-8", "galaxy-s24"}
        assert a.parity.status == "pass" and a.parity.cosine > 0.9999, a.parity
        assert a.toolchain["torch"] and a.toolchain["onnxruntime"] and a.toolchain["executorch"]


@pytest.mark.backend_onnx
@pytest.mark.backend_executorch
def test_manifest_hashes_and_sizes_match_files(convnet_export):
    _, _, out, _ = convnet_export
    manifest = Manifest.read(out / "manifest.json")
    for a in manifest.artifacts:
        path = manifest.path_of(a)
        assert sha256_of(path) == a.sha256
        assert path.stat().st_size == a.size_bytes
        assert a.inputs[0].shape == (1, 3, 16, 16) and a.outputs[0].shape == (1, 4)


@pytest.mark.backend_onnx
@pytest.mark.backend_executorch
def test_second_export_is_a_cache_hit(convnet_export, cache_dir, tmp_path):
    model, inputs, _, first = convnet_export
    again = mobilekit.export(model, inputs, targets=["pixel-8", "galaxy-s24"], formats=["onnx", "executorch"],
                             precision="fp32", out_dir=tmp_path, cache_dir=cache_dir, model_name="convnet")
    assert all(a.cached for a in again.artifacts)
    assert [a.sha256 for a in again.artifacts] == [a.sha256 for a in first.artifacts]
    # a changed weight is a new export
    changed = tiny_convnet(seed=1)[0]
    third = mobilekit.export(changed, inputs, targets=["pixel-8"], formats=["onnx"], precision="fp32",
                             out_dir=tmp_path / "c", cache_dir=cache_dir, model_name="convnet")
    assert not third.artifacts[0].cached


@pytest.mark.backend_onnx
def test_no_cache_rebuilds(convnet_export, cache_dir, tmp_path):
    model, inputs, _, _ = convnet_export
    m = mobilekit.export(model, inputs, targets=["pixel-8"], formats=["onnx"], precision="fp32", out_dir=tmp_path,
                         cache_dir=cache_dir, use_cache=False)
    assert not m.artifacts[0].cached


@pytest.mark.backend_onnx
def test_int8_is_smaller_and_within_tolerance(tmp_path, cache_dir):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    inputs = (torch.randn(2, 64),)
    fp32 = mobilekit.export(model, inputs, targets=["pixel-8"], formats=["onnx"], precision="fp32",
                            out_dir=tmp_path / "a", cache_dir=cache_dir)
    int8 = mobilekit.export(model, inputs, targets=["pixel-8"], formats=["onnx"], precision="int8-dynamic",
                            out_dir=tmp_path / "b", cache_dir=cache_dir)
    assert int8.artifacts[0].size_bytes < 0.5 * fp32.artifacts[0].size_bytes
    assert int8.artifacts[0].parity.status == "pass"


@pytest.mark.backend_onnx
def test_out_of_tolerance_fails_with_numbers(tmp_path, cache_dir, monkeypatch):
    # the runtime check itself: with the PyTorch int8 simulation out of the way (it would refuse first)
    monkeypatch.setattr("mobilekit.quant_sim.simulate", lambda *a, **k: None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    with pytest.raises(ParityError) as info:
        mobilekit.export(model, (torch.randn(2, 64),), targets=["pixel-8"], formats=["onnx"],
                         precision="int8-dynamic", out_dir=tmp_path, cache_dir=cache_dir,
                         tolerances={"int8-dynamic": {"cosine": 0.9999999, "psnr_db": 200}})
    assert "cosine" in str(info.value) and "onnx-int8-dynamic" in str(info.value)
    assert not (tmp_path / "manifest.json").exists()


def test_unknown_target_suggests_nearest(tmp_path):
    model, inputs = tiny_convnet()
    with pytest.raises(ConfigError) as info:
        mobilekit.export(model, inputs, targets=["pixel8"], out_dir=tmp_path)
    assert "pixel-8" in str(info.value)


def test_unsupported_combination_is_refused_up_front_with_alternatives(tmp_path):
    model, inputs = tiny_convnet()
    with pytest.raises(ConfigError) as info:
        mobilekit.export(model, inputs, targets=["iphone-15-pro"], formats=["coreml"], precision="int8-dynamic",
                         out_dir=tmp_path)
    assert "coreml-fp16" in str(info.value) and "int8-dynamic" in str(info.value)


def test_inputs_the_model_rejects(tmp_path):
    model, _ = tiny_convnet()
    with pytest.raises(ConfigError, match=r"rejects the example inputs \(\(1, 5, 16, 16\)"):
        mobilekit.export(model, (torch.randn(1, 5, 16, 16),), targets=["pixel-8"], out_dir=tmp_path)


# ---- CLI: one clear line and exit code 2 for bad input ------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilekit.cli.main", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("args, needle", [
    (["export", "builtin:dit-tiny", "-t", "pixle-8"], "pixel-8"),
    (["export", "no_such_module_q:make", "-t", "pixel-8"], "cannot import 'no_such_module_q'"),
    (["export", "builtin:dit-tiny", "-t", "pixel-8", "-p", "int9"], "unknown precision 'int9'"),
])
def test_cli_bad_input_exit_code_2(args, needle, tmp_path):
    proc = _cli(*args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _cli("export", "builtin:dit-tiny", "-t", "pixel-8", "--out", str(blocker / "sub"))
    assert proc.returncode == 2 and "cannot write the output directory" in proc.stderr


def test_cli_model_folder_with_wrong_input_shapes(tmp_path):
    from tests.fixtures.models import tiny_dit

    tiny_dit().save_pretrained(tmp_path / "dit")
    proc = _cli("export", str(tmp_path / "dit"), "-t", "pixel-8", "--input", "latents=1x3x8x8",
                "--input", "timestep=1:int64", "--input", "class_labels=1:int64", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "rejects the example inputs" in proc.stderr


@pytest.mark.slow
@pytest.mark.backend_executorch
def test_kill_9_mid_export_leaves_nothing(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {**os.environ, "MOBILEKIT_CACHE_DIR": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "mobilekit.cli.main", "export", "builtin:dit-tiny", "-t",
                             "pixel-8", "--format", "executorch", "--precision", "fp32", "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(cache.glob(".incoming-*")):
        time.sleep(0.05)
    assert any(cache.glob(".incoming-*")), "export never started converting"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in out.rglob("*") if not p.name.startswith(".")] if out.exists() else True
    entries = [p for p in cache.rglob("entry.json")]
    assert entries == []
    # the next export sweeps the abandoned work directory
    from mobilekit.cache import ExportCache

    ExportCache(cache).sweep()
    assert not any(cache.glob(".incoming-*"))


@pytest.mark.backend_onnx
def test_cli_export_prints_manifest_json(tmp_path, cache_dir):
    env = {**os.environ, "MOBILEKIT_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-m", "mobilekit.cli.main", "export", "builtin:dit-tiny", "-t", "pixel-8",
                           "-f", "onnx", "-p", "fp32", "--out", str(tmp_path), "--json"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["artifacts"][0]["recipe_name"] == "onnx-fp32"
    assert [i["name"] for i in data["artifacts"][0]["inputs"]] == ["latents", "timestep", "class_labels"]
    assert (tmp_path / data["artifacts"][0]["path"]).is_file()


def _outlier_mlp() -> torch.nn.Module:
    """Four Linears; ``0.2``'s rows each hold one huge weight on an input that is always 0, so int8
    rounds the rest of every row to 0 (the whole model misses int8's floor in PyTorch itself), and
    it is a small share of the weights."""
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    with torch.no_grad():
        inner[0].weight[0] = 0.0
        inner[0].bias[0] = 0.0
        inner[2].weight[:, 0] = 500.0
    return torch.nn.Sequential(inner, torch.nn.ReLU(), torch.nn.Linear(64, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 512)).eval()


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.backend_onnx),
                                 pytest.param("executorch", marks=pytest.mark.backend_executorch)])
def test_int8_dynamic_keeps_the_sensitive_module_float_and_holds_parity_in_the_runtime(fmt, tmp_path):
    """Before ONNX and ExecuTorch could keep modules float this recipe was refused; now the preflight
    keeps ``0.2`` float, the converter builds exactly that Linear float, and the runtime holds parity."""
    from mobilekit.estimation.precision import read_onnx_precisions

    model, x = _outlier_mlp(), (torch.randn(8, 64),)
    m = mobilekit.export(model, x, targets=["pixel-8"], formats=[fmt], precision="int8-dynamic",
                         out_dir=tmp_path / "out", use_cache=False, model_name="outlier")
    (a,) = m.artifacts
    assert a.parity.status == "pass", a.parity.reason
    (note,) = [n for n in a.notes if "kept in float" in n]
    assert "misses the floor" in note and "1 module(s) kept in float" in note and ": 0.2;" in note
    counts = (read_onnx_precisions(tmp_path / "out" / a.path)["matmul"] if fmt == "onnx"
              else a.op_precisions["matmul"])
    assert dict(counts) == {"fp32" if fmt == "onnx" else "float": 1, "int8-dynamic": 3}, counts
