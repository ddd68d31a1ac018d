"""ONNX converter: real .onnx exports run by ONNX Runtime, compared with PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript", reason="install with: pip install 'mobilekit[onnx]'")
pytest.importorskip("onnxruntime", reason="install with: pip install 'mobilekit[onnx]'")

from mobilekit.converters import get_converter  # noqa: E402
from mobilekit.converters.onnx import OnnxConverter  # noqa: E402
from mobilekit.errors import ConfigError, UnsupportedOpError  # noqa: E402
from mobilekit.parity import compare, tolerance_for  # noqa: E402
from mobilekit.recipe import Recipe  # noqa: E402
from mobilekit.runtime import run_artifact  # noqa: E402
from tests.fixtures.models import (DiTWrapper, reference_outputs, tiny_convnet, tiny_dit,  # noqa: E402
                                   tiny_dit_inputs, tiny_gan)

pytestmark = [pytest.mark.backend_onnx, pytest.mark.xdist_group("onnx")]

PRECISIONS = ("fp32", "fp16", "int8-weight", "int8-dynamic", "int8-static")


class WideNet(torch.nn.Module):
    """Weights dominate the file (≈70k parameters): conv, a 3-D MatMul and 2-D Gemms."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(32, 256)
        self.fc2 = torch.nn.Linear(256, 256)
        self.out = torch.nn.Linear(256, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)  # [B, HW, C]: linear becomes MatMul
        y = torch.relu(self.fc1(y)).mean(dim=1)                   # [B, 256]: linears become Gemm
        return self.out(torch.relu(self.fc2(y)))


class SearchSorted(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("edges", torch.tensor([-0.5, 0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.edges, x.contiguous()).to(x.dtype) + x


class CallsSearchSorted(torch.nn.Module):
    """A model whose ``head.lookup`` calls torch.searchsorted, which the ONNX exporter cannot translate."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.head = torch.nn.ModuleDict({"lookup": SearchSorted()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head["lookup"](self.proj(x))


def _wide() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return WideNet().eval(), (torch.randn(1, 3, 8, 8),)


MODELS: dict[str, Any] = {
    "convnet": tiny_convnet,
    "wide": _wide,
    "dit": lambda: (DiTWrapper(tiny_dit()).eval(), tiny_dit_inputs()),
    "gan": tiny_gan,
}
CASES = [(m, p) for m in ("convnet", "wide", "dit") for p in PRECISIONS] + [("gan", "fp32"), ("gan", "int8-static")]


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    return {name: build() for name, build in MODELS.items()}


@pytest.fixture(scope="module")
def exports(models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Export (model, precision) once per module, on first use."""
    done: dict[tuple[str, str], tuple[Path, Any]] = {}

    def get(name: str, precision: str) -> tuple[Path, Any]:
        if (name, precision) not in done:
            model, inputs = models[name]
            work = tmp_path_factory.mktemp(f"onnx-{name}-{precision}")
            res = OnnxConverter().convert(model, inputs, Recipe.parse(f"onnx-{precision}"), work)
            done[name, precision] = (work / res.filename, res)
        return done[name, precision]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_onnx_runs_in_onnxruntime_and_matches_pytorch(models: dict[str, Any], exports: Any, name: str,
                                                      precision: str) -> None:
    model, inputs = models[name]
    path, res = exports(name, precision)
    assert path.suffix == ".onnx" and path.stat().st_size > 0 and res.extra_files == []
    assert list(res.stages) == ["prepare", "lower", "quantize", "serialize"]
    outputs = run_artifact(path, [t.numpy() for t in inputs])
    tol = tolerance_for(precision)  # fp32: cosine ≥ 0.9999 / 60 dB; fp16 0.999 / 40; int8-static 0.95 / 15
    parity = compare(reference_outputs(model, inputs), outputs, tolerance=tol, runtime="onnxruntime")
    assert parity.status == "pass", parity.reason
    if precision == "fp32":
        np.testing.assert_allclose(outputs[0], reference_outputs(model, inputs)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_io_names_and_float_io_are_kept(exports: Any) -> None:
    import onnx

    for precision in ("fp32", "fp16", "int8-static"):
        path, res = exports("dit", precision)
        assert res.input_names == ["latents", "timestep", "class_labels"]
        assert res.output_names == ["output"]
        graph = onnx.load(str(path)).graph
        types = [i.type.tensor_type.elem_type for i in graph.input]
        assert types == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT64], precision
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, precision


@pytest.mark.slow
def test_quantized_onnx_is_smaller_and_really_int8(exports: Any) -> None:
    import onnx

    size = {p: exports("wide", p)[0].stat().st_size for p in PRECISIONS}
    for precision in ("fp16", "int8-weight", "int8-dynamic", "int8-static"):
        assert size[precision] < size["fp32"], size
    for precision in ("int8-weight", "int8-dynamic", "int8-static"):
        assert size[precision] < size["fp16"], size
    ops = {p: {n.op_type for n in onnx.load(str(exports("wide", p)[0])).graph.node} for p in PRECISIONS}
    assert {"MatMulNBits", "DequantizeLinear"} <= ops["int8-weight"]
    assert "QuantizeLinear" not in ops["int8-weight"]  # activations stay float
    assert ops["int8-dynamic"] & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops["int8-static"]


@pytest.mark.slow
def test_int8_static_uses_the_calibration_batches(models: dict[str, Any], tmp_path: Path) -> None:
    model, inputs = models["wide"]
    g = torch.Generator().manual_seed(3)
    calibration = [(torch.randn(1, 3, 8, 8, generator=g),) for _ in range(4)]
    res = OnnxConverter().convert(model, inputs, Recipe.parse("onnx-int8-static"), tmp_path, calibration=calibration)
    assert any("calibrated on 4 batch(es)" in n for n in res.notes), res.notes
    x = calibration[1]
    out = run_artifact(tmp_path / res.filename, [x[0].numpy()])
    parity = compare(reference_outputs(model, x), out, tolerance=tolerance_for("int8-static"), runtime="onnxruntime")
    assert parity.status == "pass", parity.reason


def test_external_weights_go_to_a_data_file(models: dict[str, Any], tmp_path: Path) -> None:
    model, inputs = models["wide"]
    res = OnnxConverter(external_weights=True).convert(model, inputs, Recipe.parse("onnx-fp32"), tmp_path)
    assert res.extra_files == ["model.onnx.data"]
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (tmp_path / "model.onnx.data").stat().st_size >= 0.95 * weight_bytes  # tensors under 1 KiB stay inline
    assert (tmp_path / res.filename).stat().st_size < weight_bytes // 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]  # no temporaries left
    out = run_artifact(tmp_path / res.filename, [t.numpy() for t in inputs])
    np.testing.assert_allclose(out[0], reference_outputs(model, inputs)[0], atol=1e-5, rtol=1e-4)


def test_supports_every_precision_and_refuses_other_formats() -> None:
    conv = get_converter("onnx")
    assert isinstance(conv, OnnxConverter)
    for p in PRECISIONS:
        assert conv.supports(Recipe.parse(f"onnx-{p}")), p
    no = conv.supports(Recipe.parse("tflite-fp32"))
    assert not no and "not tflite" in no.reason and "onnx-int8-static" in no.supported


def test_unsupported_op_names_op_and_module_path(tmp_path: Path) -> None:
    model, x = CallsSearchSorted().eval(), (torch.randn(2, 8),)
    with pytest.raises(UnsupportedOpError) as info:
        OnnxConverter().convert(model, x, Recipe.parse("onnx-fp32"), tmp_path)
    err = info.value
    assert err.op is not None and "searchsorted" in err.op
    assert err.module_path == "head.lookup"
    assert "head.lookup" in str(err) and err.fix


def test_bad_inputs_and_options_are_refused(tmp_path: Path) -> None:
    model, inputs = tiny_convnet()
    with pytest.raises(ConfigError, match=r"example_inputs\[0\] is a list") as info:
        OnnxConverter().convert(model, ([1.0],), Recipe.parse("onnx-fp32"), tmp_path)
    assert info.value.where == "example_inputs[0]"
    with pytest.raises(ConfigError, match="calibration is empty"):
        OnnxConverter().convert(model, inputs, Recipe.parse("onnx-int8-static"), tmp_path, calibration=[])
    with pytest.raises(ConfigError, match="opset"):
        OnnxConverter(opset=11)


def test_caller_model_is_left_alone(tmp_path: Path) -> None:
    model, inputs = tiny_convnet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    OnnxConverter().convert(model, inputs, Recipe.parse("onnx-int8-static"), tmp_path)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("precision", ["fp32", "int8-dynamic"])
def test_over_two_gigabytes_goes_to_external_data_that_loads_from_the_output_dir(tmp_path, monkeypatch, precision):
    """The protobuf limit path (DiT-XL/2 is 3 GB), exercised on a small model by lowering the limit."""
    import mobilekit
    import mobilekit.converters.onnx as onnx_conv

    monkeypatch.setattr(onnx_conv, "_PROTOBUF_LIMIT", 1024)
    model, inputs = tiny_convnet()
    m = mobilekit.export(model, inputs, targets=["pixel-8"], formats=["onnx"], precision=precision,
                         out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", model_name="big")
    (a,) = m.artifacts
    assert a.extra_files == (f"big-onnx-{precision}.onnx.data",)
    assert any("over 2 GB" in n for n in a.notes)
    # the placed .onnx names the placed data file (not the cache's model.onnx.data)
    outputs = run_artifact(tmp_path / "out" / a.path, [t.numpy() for t in inputs])
    ref = reference_outputs(model, inputs)
    assert compare(ref, outputs, tolerance=tolerance_for(precision), runtime="onnxruntime").status == "pass"
    assert not (tmp_path / "out" / "model.onnx.data").exists()


class _ConvBNStack(torch.nn.Module):
    """Six conv + BatchNorm pairs: the exporter fuses each BatchNorm into its Conv, and the fused
    Conv carries the BatchNorm's module path, so ``blocks.1.conv`` must be found through the fusion."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict({"conv": torch.nn.Conv2d(8, 8, 3, padding=1), "bn": torch.nn.BatchNorm2d(8)})
            for _ in range(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = torch.relu(b["bn"](b["conv"](x)))
        return x


@pytest.mark.parametrize("precision", ["int8-weight", "int8-static"])
def test_float_modules_stay_float_and_only_they(tmp_path: Path, precision: str) -> None:
    from mobilekit.estimation.precision import read_onnx_precisions

    torch.manual_seed(0)
    model, x = _ConvBNStack().eval(), torch.randn(1, 8, 16, 16)
    res = OnnxConverter().convert(model, (x,), Recipe.parse(f"onnx-{precision}"), tmp_path,
                                  float_modules=["blocks.1.conv", "blocks.4"])
    counts = read_onnx_precisions(tmp_path / res.filename)["conv"]
    assert counts == {"fp32": 2, precision: 4}, counts
    assert not [n for n in res.notes if "no node of the graph" in n]  # both were found
    got = run_artifact(tmp_path / res.filename, [x.numpy()])
    parity = compare(reference_outputs(model, (x,)), got, tolerance=tolerance_for(precision), runtime="onnxruntime")
    assert parity.status == "pass", parity.reason


def test_float_modules_naming_no_module_is_refused(tmp_path: Path) -> None:
    model, x = _ConvBNStack().eval(), torch.randn(1, 8, 16, 16)
    with pytest.raises(ConfigError, match=r"no module 'blocks\.99'"):
        OnnxConverter().convert(model, (x,), Recipe.parse("onnx-int8-weight"), tmp_path, float_modules=["blocks.99"])
    assert not any(tmp_path.iterdir())
