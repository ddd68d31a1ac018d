"""The estimator prices the artifact actually built: per-op precision read from real .onnx and .tflite
files and .mlpackage ML Programs and from what an ExecuTorch export recorded, checked against what the
converters really produced, layer by layer where an artifact mixes int8 and float weights."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mobilekit.estimation.api import estimate
from mobilekit.estimation.precision import artifact_overrides
from tests.fixtures.models import ConvLinear

pytestmark = pytest.mark.slow


class _MaskedSoftmax(torch.nn.Module):
    """A causal-mask add before a softmax: full-integer int8 flattens it (one int8 step of the
    -1e4 mask's range is larger than the logits), so the TFLite converter falls back to int8
    linears with the add and softmax in float."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 16)
        self.fc2 = torch.nn.Linear(16, 16, bias=False)
        with torch.no_grad():
            self.fc1.weight.mul_(4.0)  # peaked softmax rows: what a flattened one visibly loses
        self.register_buffer("mask", torch.triu(torch.full((16, 16), -1e4), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.softmax(self.fc1(x) + self.mask, -1))


def _export(model: torch.nn.Module, x: tuple[torch.Tensor, ...], fmt: str, precision: str, out: Path,
            target: str = "pixel-8") -> Any:
    from mobilekit import export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export(model, x, targets=[target], out_dir=out, precision=precision, formats=[fmt],
                          verify=False, use_cache=False)
    (art,) = manifest.artifacts
    return art, out / art.path


def _conv_linear() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return ConvLinear().eval(), (torch.randn(1, 3, 8, 8),)


def _counts(path: Path) -> dict[str, dict[str, int]] | None:
    return artifact_overrides(path, None)[1]


def test_files_without_a_readable_precision_fall_back_to_the_recipe_table(tmp_path: Path) -> None:
    (tmp_path / "model.mlpackage").mkdir()
    (tmp_path / "model.pte").write_bytes(b"")
    for name in ("model.mlpackage", "model.pte", "missing.tflite"):
        assert artifact_overrides(tmp_path / name, None) == ({}, None, "recipe table")
    model, x = _conv_linear()
    e = estimate(model, x, target="pixel-8", format="executorch", precision="int8-dynamic", compute_unit="cpu",
                 artifact=tmp_path / "model.pte")  # no manifest beside it
    assert e.roofline["precision_from"] == "recipe table" and "artifact_precisions" not in e.roofline
    assert any("model.pte shows none" in n for n in e.notes)


@pytest.mark.backend_tflite
@pytest.mark.xdist_group("tflite")
def test_tflite_graph_is_read_for_what_each_recipe_quantized(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    model, x = _conv_linear()
    # what ai-edge-quantizer writes: dynamic = hybrid conv/FC (float input, int8 weight); weight-only =
    # a DEQUANTIZE on the int8 weight; static = int8 everywhere; fp16 = a DEQUANTIZE of float16 weights
    want = {"fp16": ("fp32", "fp32", "fp32"),
            "int8-weight": ("int8-weight", "int8-weight", "fp32"),
            "int8-dynamic": ("int8-dynamic", "int8-dynamic", "fp32"),
            "int8-static": ("int8-static", "int8-static", "int8-static")}
    for prec, (conv, matmul, other) in want.items():
        _, path = _export(model, x, "tflite", prec, tmp_path / prec)
        counts = _counts(path)
        assert counts is not None, prec
        assert counts["conv"] == {conv: 1} and counts["matmul"] == {matmul: 1}, (prec, counts)
        assert set(counts["other"]) == {other}, (prec, counts)  # transposes and the reshape
    # float ops of a TFLite model run at fp32 on a CPU, at the GPU's fp16 there
    path = tmp_path / "fp16" / next(p.name for p in (tmp_path / "fp16").glob("*.tflite"))
    gpu = estimate(model, x, target="pixel-8", format="tflite", precision="fp16", compute_unit="gpu", artifact=path)
    assert gpu.roofline["precision_from"] == "tflite graph"
    assert gpu.roofline["artifact_precisions"]["conv"] == {"fp16": 1}


@pytest.mark.backend_tflite
@pytest.mark.xdist_group("tflite")
def test_tflite_int8_static_fallback_is_priced_as_built_not_as_named(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    torch.manual_seed(0)
    model, x = _MaskedSoftmax().eval(), (torch.randn(1, 16, 16),)
    art, path = _export(model, x, "tflite", "int8-static", tmp_path)
    assert any("kept the mixed model" in n for n in art.notes), art.notes
    counts = _counts(path)
    assert counts == {"conv": {}, "matmul": {"int8-static": 2}, "other": {"fp32": 2}}  # ADD, SOFTMAX
    kw: dict[str, Any] = {"target": "pixel-8", "format": "tflite", "precision": "int8-static", "compute_unit": "cpu"}
    table = estimate(model, x, **kw)
    built = estimate(model, x, artifact=path, **kw)
    assert table.roofline["precision_from"] == "recipe table" and built.roofline["precision_from"] == "tflite graph"
    prec = {r["op"]: r["precision"] for r in built.per_layer}
    assert prec["linear"] == "int8-static" and prec["softmax"] == "fp32" and prec["add"] == "fp32"
    assert {r["op"]: r["precision"] for r in table.per_layer}["softmax"] == "int8-static"  # the name's promise
    assert built.ms > table.ms  # float add and softmax cost more than their int8 pricing


@pytest.mark.backend_executorch
@pytest.mark.xdist_group("executorch")
def test_executorch_export_records_per_op_precision_for_the_estimator(tmp_path: Path) -> None:
    pytest.importorskip("executorch.exir")
    model, x = _conv_linear()
    art, path = _export(model, x, "executorch", "int8-dynamic", tmp_path / "dyn")
    # XNNPACK's dynamic quantizer is set on nn.Linear only: the conv stays float
    assert art.op_precisions == {"conv": {"float": 1}, "matmul": {"int8-dynamic": 1}}
    e = estimate(model, x, target="pixel-8", format="executorch", precision="int8-dynamic", compute_unit="cpu",
                 artifact=path)
    assert e.roofline["precision_from"] == "export manifest"
    assert e.roofline["artifact_precisions"] == {"conv": {"fp32": 1}, "matmul": {"int8-dynamic": 1}}
    by_op = {r["op"]: r["precision"] for r in e.per_layer}
    assert by_op["conv2d"] == "fp32" and by_op["linear"] == "int8-dynamic"
    static, _ = _export(model, x, "executorch", "int8-static", tmp_path / "static")
    assert static.op_precisions == {"conv": {"int8-static": 1}, "matmul": {"int8-static": 1}}
    # the record travels with the manifest: a .pte copied away from it is priced by the table
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(path, alone / path.name)
    assert artifact_overrides(alone / path.name, "executorch")[2] == "recipe table"


@pytest.mark.backend_coreml
@pytest.mark.xdist_group("coreml")
def test_coreml_package_is_read_for_its_int8_weights_and_compute_precision(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("coremltools")
    from mobilekit.converters.coreml import MIN_QUANTIZED_WEIGHT_ELEMENTS

    model, x = _conv_linear()
    assert model.conv.weight.numel() < MIN_QUANTIZED_WEIGHT_ELEMENTS <= model.fc.weight.numel()
    paths = {p: _export(model, x, "coreml", p, tmp_path / p, target="iphone-15-pro")[1]
             for p in ("fp32", "fp16", "int8-weight")}
    counts = {p: _counts(path) for p, path in paths.items()}
    # fp32 compute keeps every float op fp32; fp16 compute precision runs them in fp16 (the casts at the
    # inputs and outputs are not counted); linear_quantize_weights stores the linear's weight in int8
    # behind a constexpr_affine_dequantize but leaves the conv's 216 weights (below its threshold) fp16
    assert counts["fp32"] == {"conv": {"fp32": 1}, "matmul": {"fp32": 1}, "other": {"fp32": 2}}, counts
    assert counts["fp16"] == {"conv": {"fp16": 1}, "matmul": {"fp16": 1}, "other": {"fp16": 2}}, counts
    assert counts["int8-weight"] == {"conv": {"fp16": 1}, "matmul": {"int8-weight": 1}, "other": {"fp16": 2}}, counts
    kw: dict[str, Any] = {"target": "iphone-15-pro", "format": "coreml", "compute_unit": "npu"}
    fp16 = estimate(model, x, precision="fp16", artifact=paths["fp16"], **kw)
    int8 = estimate(model, x, precision="int8-weight", artifact=paths["int8-weight"], **kw)
    table = estimate(model, x, precision="int8-weight", **kw)
    assert fp16.roofline["precision_from"] == int8.roofline["precision_from"] == "coreml graph"
    assert table.roofline["precision_from"] == "recipe table"
    rows = {name: {r["op"]: r for r in e.per_layer} for name, e in (("fp16", fp16), ("int8", int8), ("table", table))}
    assert rows["int8"]["linear"]["precision"] == "int8-weight" and rows["fp16"]["linear"]["precision"] == "fp16"
    # the conv is priced as built: the table's int8-weight promise is not in the package
    assert rows["table"]["conv2d"]["precision"] == "int8-weight" and rows["int8"]["conv2d"]["precision"] == "fp16"
    # the linear reads 8192x16 weights and a few hundred activations: one byte a weight instead of two
    # outweighs its wider activations, so the int8-weight package moves fewer bytes there
    assert rows["int8"]["linear"]["bytes"] < rows["fp16"]["linear"]["bytes"]
    assert rows["int8"]["conv2d"]["bytes"] == rows["fp16"]["conv2d"]["bytes"]
    assert int8.ms < fp16.ms
    # calibrating on a phone's report of the package prices that report as built too (the package is a folder)
    from mobilekit.estimation.device_calibration import calibrate
    from mobilekit.profiling.report import LatencyReport

    # The shipped ios/npu fit makes this tiny model compute-bound (its on-chip memory hides weight
    # bytes), so int8 and fp16 weights price the same; a memory-bound fit makes the artifact's
    # precision show in milliseconds, so "priced as built" can be told from "priced by the table".
    from dataclasses import replace

    from mobilekit.estimation import fit as fit_mod

    shipped = fit_mod.fitted_params()
    bound = fit_mod.Calibration({k: replace(v, eff_memory=1e-3) for k, v in shipped.families.items()},
                                shipped.format_factor, shipped.device_factor)
    monkeypatch.setattr(fit_mod, "fitted_params", lambda: bound)
    report = LatencyReport(artifact=str(paths["int8-weight"]), format="coreml", runtime="coreml", source="device",
                           device={"name": "iPhone 15 Pro"}, target="iphone-15-pro", model="convlinear",
                           precision="int8-weight", p50_ms=1.0)
    (row,) = calibrate([report], models={"convlinear": (model, x)}, store=tmp_path / "store", dry_run=True).rows
    assert row.before_ms == pytest.approx(estimate(model, x, precision="int8-weight", artifact=paths["int8-weight"],
                                                   calibration=False, **kw).ms, rel=1e-9)
    assert row.before_ms != pytest.approx(estimate(model, x, precision="int8-weight", calibration=False, **kw).ms,
                                          rel=1e-9)
    # a package the reader finds no ML Program in is priced by the table, and the estimate says so
    (tmp_path / "empty.mlpackage").mkdir()
    empty = estimate(model, x, precision="int8-weight", artifact=tmp_path / "empty.mlpackage", **kw)
    assert empty.roofline["precision_from"] == "recipe table" and "artifact_precisions" not in empty.roofline
    assert any("empty.mlpackage shows none" in n for n in empty.notes)


@pytest.mark.backend_coreml
@pytest.mark.xdist_group("coreml")
def test_coreml_activation_quantization_is_read_as_int8_static(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ct = pytest.importorskip("coremltools")
    ptq = pytest.importorskip("coremltools.optimize.coreml._post_training_quantization")
    from mobilekit.converters.coreml import _quantize, program_ops

    if not hasattr(ptq, "_get_activation_calibration_stats"):
        pytest.skip("coremltools no longer calibrates through _get_activation_calibration_stats")
    model, x = _conv_linear()
    _, fp16 = _export(model, x, "coreml", "fp16", tmp_path / "fp16", target="iphone-15-pro")
    ops = program_ops(fp16)
    assert ops is not None
    # the converter's int8-static path (linear_quantize_activations, then int8 weights) with coremltools'
    # own graph passes; only the calibration, which runs the model in the Core ML runtime (macOS), is
    # replaced by one range for every tensor: the quantize/dequantize pairs it places do not depend on it
    monkeypatch.setattr(ptq, "_get_activation_calibration_stats", lambda *a, **k: {
        o.name: {"rmin": -8.0, "rmax": 8.0} for op in ops if op.type != "const" for o in op.outputs})
    mlmodel = ct.models.MLModel(str(fp16), skip_model_load=True)
    names = [i.name for i in mlmodel.get_spec().description.input]
    path = tmp_path / "static.mlpackage"
    _quantize(ct, mlmodel, "int8-static", names, [x]).save(str(path))
    counts = _counts(path)
    assert counts is not None
    # both compute ops read dequantized int8 activations; the reshape between them moves int8 values;
    # the relu after the conv runs on its fp16 output, before the next quantize
    assert counts["conv"] == {"int8-static": 1} and counts["matmul"] == {"int8-static": 1}, counts
    assert counts["other"] == {"fp16": 1, "int8-static": 1}, counts
    e = estimate(model, x, target="iphone-15-pro", format="coreml", precision="int8-static", compute_unit="npu",
                 artifact=path)
    assert e.roofline["precision_from"] == "coreml graph"
    by_op = {r["op"]: r["precision"] for r in e.per_layer}
    assert by_op["conv2d"] == "int8-static" and by_op["linear"] == "int8-static"


def _big_and_small() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Three 8x8 linears (64 weights each, under the Core ML and ONNX converters' 256-element floor)
    and one 8x256 (2048 weights): by op count the artifact's linears are mostly float, by weights
    mostly int8."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(3):
        layers += [torch.nn.Linear(8, 8), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(8, 256)).eval(), (torch.randn(1, 8),)


def _linears(e: Any) -> list[dict[str, Any]]:
    return [r for r in e.per_layer if r["op"] == "linear"]


@pytest.mark.parametrize("fmt,target,unit,flt", [
    pytest.param("onnx", "pixel-8", "cpu", "fp32", marks=pytest.mark.backend_onnx),
    pytest.param("coreml", "iphone-15-pro", "npu", "fp16", marks=[pytest.mark.backend_coreml,
                                                                 pytest.mark.xdist_group("coreml")]),
    pytest.param("tflite", "pixel-8", "cpu", "fp32", marks=[pytest.mark.backend_tflite,
                                                           pytest.mark.xdist_group("tflite")])])
def test_mixed_int8_weight_artifact_prices_each_linear_as_built(tmp_path: Path, fmt: str, target: str, unit: str,
                                                                flt: str) -> None:
    for mod in {"onnx": ("onnxruntime",), "coreml": ("coremltools",),
                "tflite": ("litert_torch", "ai_edge_quantizer")}[fmt]:
        pytest.importorskip(mod)
    from mobilekit import export

    model, x = _big_and_small()
    # ONNX and Core ML leave the small weights float themselves; TFLite quantizes every weight, so
    # the small linears are kept float the way the int8 fallback keeps sensitive modules
    options = {"float_modules": ["0", "2", "4"]} if fmt == "tflite" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export(model, x, targets=[target], out_dir=tmp_path, precision="int8-weight", formats=[fmt],
                          verify=False, use_cache=False, converter_options=options)
    path = tmp_path / manifest.artifacts[0].path
    # the artifact really is mixed, and by op count float wins: the majority vote priced every linear float
    assert _counts(path)["matmul"] == {flt: 3, "int8-weight": 1}
    kw: dict[str, Any] = {"target": target, "format": fmt, "precision": "int8-weight", "compute_unit": unit}
    built, table = estimate(model, x, artifact=path, **kw), estimate(model, x, **kw)
    *small, big = _linears(built)
    *small_table, big_table = _linears(table)
    assert big["precision"] == "int8-weight" and {r["precision"] for r in small} == {flt}
    # the table promises int8 weights everywhere: the big linear is priced as it promised, the small
    # ones move their float weights
    assert big["bytes"] == big_table["bytes"]
    assert all(s["bytes"] > t["bytes"] for s, t in zip(small, small_table))


@pytest.mark.backend_coreml
@pytest.mark.xdist_group("coreml")
def test_gan_tiny_coreml_int8_weight_prices_its_int8_feed_forward_as_int8(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    from tests.fixtures.models import tiny_gan

    model, x = tiny_gan()
    art, path = _export(model, x, "coreml", "int8-weight", tmp_path, target="iphone-15-pro")
    counts = _counts(path)
    assert counts is not None
    # linear_quantize_weights stores the feed-forward's two weights in int8 and leaves the attention
    # projections' (at or under 256 elements) fp16: 8 linears of 10 are fp16
    assert counts["matmul"] == {"fp16": 8, "int8-weight": 2}, counts
    e = estimate(model, x, target="iphone-15-pro", format="coreml", precision="int8-weight", compute_unit="npu",
                 artifact=path)
    prec = {r["name"].split(":")[0]: r["precision"] for r in _linears(e)}
    assert {n for n, p in prec.items() if p == "int8-weight"} == {"transformer.ff_in", "transformer.ff_out"}, prec
    assert {p for n, p in prec.items() if ".attn" in n} == {"fp16"}, prec


def test_size_matching_prices_each_precision_its_share_of_weights_when_layer_counts_differ() -> None:
    from mobilekit.estimation.precision import match_by_size

    # the artifact fused the estimator's two 100-weight layers into one int8 op; the 10-weight layer stayed float
    got = match_by_size(np.array([10.0, 100.0, 100.0]), [(200.0, "int8-weight"), (10.0, "fp32")])
    assert got.tolist() == ["fp32", "int8-weight", "int8-weight"]
