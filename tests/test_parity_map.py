"""Per-module parity map (``mobilekit parity --by-module``): real exports run by ONNX Runtime, LiteRT and ExecuTorch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mobilekit
from mobilekit.errors import ConfigError
from mobilekit.module_parity import ParityMap, default_modules, parity_map, select_modules
from tests.fixtures.models import DiTWrapper, tiny_dit, tiny_dit_inputs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("exporting")]

BLOCKS = ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "head"]


class Block(torch.nn.Module):
    """A residual MLP block; ``outlier`` scales one input channel by 1e5 and its weights by 1e-5.

    In float the block is unchanged, but per-tensor int8 activations (dynamic quantization) get
    their scale from the outlier and round every other channel to almost nothing: the error
    enters exactly here.
    """

    def __init__(self, outlier: bool = False) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        gain = torch.ones(16)
        if outlier:
            gain[0] = 1e5
        self.register_buffer("gain", gain)
        with torch.no_grad():
            self.fc.weight /= gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x * self.gain)) + x


class BlockNet(torch.nn.Module):
    """stem → 5 blocks → head; ``outlier_at`` picks the block int8 breaks (None: none)."""

    def __init__(self, outlier_at: int | None = None) -> None:
        super().__init__()
        self.stem = torch.nn.Linear(8, 16)
        self.blocks = torch.nn.ModuleList([Block(i == outlier_at) for i in range(5)])
        self.drop = torch.nn.Dropout(0.1)  # eval: passes its input through, so it is not tapped
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.drop(x))


def _net(outlier_at: int | None = None) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return BlockNet(outlier_at).eval(), (torch.randn(4, 8),)


def _assert_clean(pm: ParityMap, modules: list[str]) -> None:
    assert [r.module for r in pm.rows] == modules
    assert pm.first_over is None and pm.passed
    assert all(r.ok and r.cosine >= 0.9999 and r.psnr_db >= 60.0 for r in pm.rows)
    assert pm.final.status == "pass"


def test_default_modules_are_the_blocks_in_order():
    model, _ = _net()
    assert default_modules(model) == ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "drop",
                                      "head"]
    dit = DiTWrapper(tiny_dit())
    assert default_modules(dit)[:3] == ["dit.pos_embed", "dit.transformer_blocks.0", "dit.transformer_blocks.1"]
    assert select_modules(model, r"blocks\.[0-1]$") == ["blocks.0", "blocks.1"]
    with pytest.raises(ConfigError, match="matches no module") as err:
        select_modules(model, "nothing_like_this")
    assert err.value.where == "--modules" and "stem" in err.value.fix


@pytest.mark.backend_onnx
def test_onnx_fp32_every_tap_within_tolerance():
    model, x = _net()
    pm = parity_map(model, x, "onnx-fp32", parity_samples=2)
    _assert_clean(pm, BLOCKS)  # the Dropout is skipped: it returns its input tensor
    assert pm.runtime == "onnxruntime" and pm.inputs == 2
    assert any("drop" in n for n in pm.notes) and any("extra graph outputs" in n for n in pm.notes)


@pytest.mark.backend_tflite
def test_tflite_fp32_dit_every_tap_within_tolerance():
    model, x = DiTWrapper(tiny_dit()).eval(), tiny_dit_inputs()
    pm = parity_map(model, x, "tflite-fp32")
    _assert_clean(pm, ["dit.pos_embed", "dit.transformer_blocks.0", "dit.transformer_blocks.1", "dit.proj_out_1",
                       "dit.norm_out", "dit.proj_out_2"])  # proj_out_1 (conditioning) finishes before norm_out
    assert pm.runtime == "ai-edge-litert"
    assert pm.rows[1].shape == (1, 16, 16)


@pytest.mark.backend_executorch
def test_executorch_xnnpack_fp32_every_tap_within_tolerance():
    model, x = _net()
    pm = parity_map(model, x, "executorch-xnnpack-fp32")
    _assert_clean(pm, BLOCKS)
    assert pm.runtime == "executorch"


@pytest.mark.backend_onnx
@pytest.mark.parametrize("recipe", ["onnx-int8-dynamic", "tflite-int8-dynamic"])
def test_int8_error_entering_at_one_block_is_found(recipe):
    if recipe.startswith("tflite"):
        pytest.importorskip("litert_torch", reason="install with: pip install 'mobilekit[tflite]'")
    model, x = _net(outlier_at=2)
    pm = parity_map(model, x, recipe)
    assert pm.first_over == "blocks.2"
    rows = {r.module: r for r in pm.rows}
    assert all(rows[m].ok for m in ("stem", "blocks.0", "blocks.1"))
    before = rows["blocks.1"].psnr_db
    for m in ("blocks.2", "blocks.3", "blocks.4", "head"):
        assert not rows[m].ok and rows[m].psnr_db < before - 20  # the error stays: every later row is worse
    assert rows["blocks.2"].growth > 10  # where it enters, the relative error jumps
    assert pm.final.status == "fail" and not pm.passed
    # a clean int8 model: finite numbers everywhere, nothing over the int8-dynamic floor
    clean = parity_map(*_net(), recipe)
    assert clean.first_over is None
    assert all(math.isfinite(v) for r in clean.rows for v in (r.cosine, r.psnr_db, r.max_abs_error, r.rel_error))
    json.dumps(clean.to_dict(), allow_nan=False)


@pytest.mark.backend_tflite
def test_taps_a_backend_rejects_together_are_split_not_dropped():
    """LiteRT int8-static rejects some tensors as extra float outputs: the map splits the taps, keeps the rest."""
    pytest.importorskip("litert_torch", reason="install with: pip install 'mobilekit[tflite]'")
    pm = parity_map(*_net(), "tflite-int8-static")
    assert [r.module for r in pm.rows] == BLOCKS
    assert all(r.status in ("pass", "error") for r in pm.rows) and pm.first_over is None
    assert sum(r.ok for r in pm.rows) >= len(BLOCKS) - 2
    errors = [r for r in pm.rows if r.status == "error"]
    if errors:
        assert any("split over" in n for n in pm.notes) and all(r.reason and r.psnr_db is None for r in errors)
    assert pm.final.status == "pass"


def test_splitting_finds_the_one_tap_that_fails_alone():
    from mobilekit.errors import ExportError
    from mobilekit.module_parity import _run_in_groups
    import numpy as np

    calls = []

    def run(group):
        calls.append(list(group))
        if "c" in group:
            raise ExportError("c cannot be an output", where="x")
        return [[np.zeros(1)] + [np.full(1, ord(p)) for p in group]], "fake"

    got, final, errors, built, runtime = _run_in_groups(run, list("abcde"))
    assert errors == {"c": "c cannot be an output"} and sorted(got) == list("abde")
    assert all(got[p][0][0] == ord(p) for p in got) and built == 2  # [a b] and [d e]
    assert calls == [list("abcde"), list("ab"), list("cde"), ["c"], list("de")]
    with pytest.raises(ExportError):
        _run_in_groups(run, ["c"])


@pytest.mark.backend_onnx
def test_cli_by_module_writes_map_and_report(tmp_path, monkeypatch):
    from mobilekit.cli.main import app

    monkeypatch.setenv("MOBILEKIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", "builtin:dit-tiny", "-t", "pixel-8", "-f", "onnx", "-p", "int8-dynamic",
                                   "-o", str(out), "--parity-samples", "1"])
    assert res.exit_code == 0, res.output
    artifact = out / "dit-tiny-onnx-int8-dynamic.onnx"
    res = CliRunner().invoke(app, ["parity", str(artifact), "--by-module", "--modules", r"transformer_blocks\.\d+$",
                                   "--out", str(tmp_path / "map"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "map" / "parity_map.json").read_text())
    assert data["recipe_name"] == "onnx-int8-dynamic" and data["artifact"] == artifact.name
    assert [r["module"] for r in data["rows"]] == [f"dit.transformer_blocks.{i}" for i in range(6)]
    assert data["first_over"] is None and data["shipped"]["status"] == "pass"
    page = (tmp_path / "map" / "parity_map.html").read_text()
    assert 'data-chart="psnr-by-module"' in page and "dit.transformer_blocks.5" in page
    assert json.loads(res.stdout)["first_over"] is None



def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilekit.cli.main", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.backend_onnx
def test_cli_spec_plain_check_and_clear_errors(tmp_path, monkeypatch):
    from mobilekit.cli.main import app
    from tests.fixtures.models import tiny_convnet

    monkeypatch.setenv("MOBILEKIT_CACHE_DIR", str(tmp_path / "cache"))
    model, x = tiny_convnet()
    manifest = mobilekit.export(model, x, targets=["pixel-8"], formats=["onnx"], precision="fp32",
                                out_dir=tmp_path / "export", model_name="my-convnet", parity_samples=1)
    artifact = manifest.path_of(manifest.artifacts[0])

    proc = _cli("parity", str(artifact), "--by-module")  # "my-convnet" names no SPEC mobilekit can build
    assert proc.returncode == 2 and "cannot rebuild model 'my-convnet'" in proc.stderr and "--spec" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli("parity", str(tmp_path / "missing.onnx"), "--by-module")
    assert proc.returncode == 2 and "artifact not found" in proc.stderr and "Traceback" not in proc.stderr
    stray = tmp_path / "model.onnx"
    stray.write_bytes(b"")
    proc = _cli("parity", str(stray))
    assert proc.returncode == 2 and "no manifest.json beside the artifact" in proc.stderr

    # --spec rebuilds it; without --by-module the plain parity check runs again in ONNX Runtime
    res = CliRunner().invoke(app, ["parity", str(artifact), "--spec", "tests.fixtures.models:tiny_convnet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "pass"
    res = CliRunner().invoke(app, ["parity", str(artifact), "--spec", "tests.fixtures.models:tiny_convnet",
                                   "--by-module"])
    assert res.exit_code == 0, res.output
    assert (artifact.parent / f"{artifact.name}.parity_map.json").exists()
    assert (artifact.parent / f"{artifact.name}.parity_map.html").exists()
    assert "conv2" in res.stdout and "every tap within tolerance" in res.stderr


def test_core_ml_off_macos_is_refused_before_any_work():
    if sys.platform == "darwin":
        pytest.skip("Core ML runs here")
    from mobilekit.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="Core ML runtime") as err:
        parity_map(*_net(), "coreml-fp16")
    assert err.value.where == "coreml-fp16" and "another format" in err.value.fix


def test_json_has_no_nan():
    from dataclasses import replace

    pm = _hand_map()
    broken = replace(pm, rows=(replace(pm.rows[0], cosine=float("nan"), rel_error=math.inf), *pm.rows[1:]))
    data = json.loads(json.dumps(broken.to_dict(), allow_nan=False))
    assert data["rows"][0]["cosine"] is None and data["rows"][0]["ok"] is True


def test_public_api():
    import mobilekit.module_parity  # noqa: F401  (a submodule must not shadow the function)

    assert mobilekit.parity_map is parity_map and mobilekit.ParityMap is ParityMap


def _hand_map() -> ParityMap:
    from mobilekit.module_parity import ModuleParity
    from mobilekit.parity import Parity
    from mobilekit.recipe import Recipe

    def row(i: int, psnr: float) -> ModuleParity:
        ok = psnr >= 20.0
        return ModuleParity(module=f"net.<b>locks.{i}", type="Block", shape=(1, 16), status="pass" if ok else "fail",
                            cosine=0.9999 if ok else 0.9, psnr_db=psnr, max_abs_error=0.01, rel_error=0.01 * (i + 1),
                            growth=None if i == 0 else (i + 1) / i)
    rows = tuple(row(i, p) for i, p in enumerate([58.0, 57.0, 999.0, 18.0, 17.0]))
    return ParityMap(recipe=Recipe.parse("onnx-int8-dynamic"), runtime="onnxruntime",
                     tolerance={"cosine": 0.98, "psnr_db": 20.0}, rows=rows, first_over="net.<b>locks.3",
                     final=Parity(status="fail", cosine=0.9, psnr_db=17.0), artifact="m.onnx")


def test_html_report_marks_first_over_and_escapes(tmp_path):
    from mobilekit.module_parity_html import render_parity_map_html, write_parity_map_html

    pm = _hand_map()
    page = render_parity_map_html(pm)
    assert "<b>locks" not in page and "net.&lt;b&gt;locks.3 ◀ first over" in page
    assert page.count('class="mk-point"') == 5 and "first over: net.&lt;b&gt;locks.3" in page
    assert "floor 20 dB" in page and "extra graph outputs" in page
    path = write_parity_map_html(tmp_path / "pm.html", pm)
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        return  # the page's layout is checked where a browser is installed (apt-get install chromium)
    proc = subprocess.run([str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=3000", "--dump-dom", path.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-mk-rendered="ok"' in proc.stdout and 'data-mk-bars="5"' in proc.stdout
