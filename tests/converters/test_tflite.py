"""TFLite / LiteRT converter: real exports run by ai-edge-litert's Interpreter, compared with PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="install with: pip install 'mobilekit[tflite]'")
pytest.importorskip("ai_edge_quantizer", reason="install with: pip install 'mobilekit[tflite]'")

from mobilekit.converters import get_converter  # noqa: E402
from mobilekit.converters.tflite import TFLiteConverter  # noqa: E402
from mobilekit.errors import ConfigError, UnsupportedOpError  # noqa: E402
from mobilekit.parity import compare, tolerance_for  # noqa: E402
from mobilekit.recipe import Recipe  # noqa: E402
from mobilekit.runtime import run_artifact  # noqa: E402
from tests.converters._models import ConvStack  # noqa: E402
from tests.fixtures.models import DiTWrapper, tiny_convnet, tiny_dit, tiny_dit_inputs, tiny_gan  # noqa: E402

pytestmark = [pytest.mark.backend_tflite, pytest.mark.xdist_group("tflite")]


MODELS: dict[str, Any] = {
    "convnet": tiny_convnet,
    "dit": lambda: (DiTWrapper(tiny_dit()).eval(), tiny_dit_inputs()),
    "gan": tiny_gan,
}
# (model, precision): every precision on the fast convnet, the DiT (int64 ids → int32) on all, the GAN on two.
CASES = [("convnet", p) for p in ("fp32", "fp16", "int8-weight", "int8-dynamic", "int8-static")] + \
        [("dit", p) for p in ("fp32", "fp16", "int8-weight", "int8-dynamic", "int8-static")] + \
        [("gan", "fp32"), ("gan", "int8-static")]


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
            work = tmp_path_factory.mktemp(f"tflite-{name}-{precision}")
            res = TFLiteConverter().convert(model, inputs, Recipe.parse(f"tflite-{precision}"), work)
            done[name, precision] = (work / res.filename, res)
        return done[name, precision]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_round_trip_through_litert_matches_pytorch(models: dict[str, Any], exports: Any, name: str,
                                                   precision: str) -> None:
    model, inputs = models[name]
    path, res = exports(name, precision)
    assert path.is_file() and path.stat().st_size > 0
    assert set(res.stages) >= {"prepare", "lower", "validate", "serialize"}
    if precision != "fp32":
        assert "quantize" in res.stages
    with torch.no_grad():
        reference = model(*inputs)
    outputs = run_artifact(path, [t.numpy() for t in inputs])
    tol = tolerance_for(precision)  # fp32: cosine ≥ 0.9999, PSNR ≥ 60 dB ... int8-static: 0.95, 15 dB
    parity = compare([reference.numpy()], outputs, tolerance=tol, runtime="ai-edge-litert")
    assert parity.status == "pass", parity.reason
    if precision == "fp32":
        np.testing.assert_allclose(outputs[0], reference.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_dit_integer_inputs_become_int32(exports: Any) -> None:
    _, res = exports("dit", "fp32")
    assert res.input_dtypes == ["float32", "int32", "int32"]
    assert res.input_names == ["args_0", "args_1", "args_2"]
    assert any("int32" in note for note in res.notes)
    assert "signature serving_default: args_0=latents, args_1=timestep, args_2=class_labels" in res.notes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnet", "dit"])
def test_quantized_artifacts_are_smaller_than_fp32(exports: Any, name: str) -> None:
    size = {p: exports(name, p)[0].stat().st_size for p in ("fp32", "fp16", "int8-weight", "int8-dynamic",
                                                            "int8-static")}
    for precision in ("fp16", "int8-weight", "int8-dynamic", "int8-static"):
        assert size[precision] < size["fp32"], size
    assert size["int8-weight"] < size["fp16"], size


@pytest.mark.slow
def test_int8_static_keeps_float_io_and_uses_calibration(models: dict[str, Any], tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    model, inputs = models["convnet"]
    g = torch.Generator().manual_seed(3)
    calibration = [(torch.randn(1, 3, 16, 16, generator=g),) for _ in range(4)]
    res = TFLiteConverter().convert(model, inputs, Recipe.parse("tflite-int8-static"), tmp_path,
                                    calibration=calibration)
    interp = Interpreter(model_path=str(tmp_path / res.filename))
    assert [d["dtype"] for d in interp.get_input_details()] == [np.float32]
    assert [d["dtype"] for d in interp.get_output_details()] == [np.float32]
    assert any(d["dtype"] == np.int8 for d in interp.get_tensor_details())
    x = calibration[1]
    with torch.no_grad():
        reference = model(*x)
    out = run_artifact(tmp_path / res.filename, [x[0].numpy()])
    parity = compare([reference.numpy()], out, tolerance=tolerance_for("int8-static"), runtime="ai-edge-litert")
    assert parity.status == "pass", parity.reason


def test_caller_model_is_left_alone(tmp_path: Path) -> None:
    model, inputs = tiny_convnet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    TFLiteConverter().convert(model, inputs, Recipe.parse("tflite-int8-dynamic"), tmp_path)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_supports_every_precision_and_refuses_other_formats() -> None:
    conv = get_converter("tflite")
    assert isinstance(conv, TFLiteConverter)
    for p in ("fp32", "fp16", "int8-weight", "int8-dynamic", "int8-static"):
        assert conv.supports(Recipe.parse(f"tflite-{p}")), p
    refused = conv.supports(Recipe.parse("onnx-fp32"))
    assert not refused
    assert "tflite" in refused.reason and "onnx" in refused.reason
    assert "tflite-int8-static" in refused.supported


class _Bucketize(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("edges", torch.linspace(-1, 1, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(x, self.edges).float()


class _WithBucketize(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = torch.nn.Linear(4, 4)
        self.block = torch.nn.Sequential(torch.nn.ReLU(), _Bucketize())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pre(x))


def test_unsupported_op_names_op_and_module_path(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        TFLiteConverter().convert(_WithBucketize().eval(), (torch.randn(1, 4),), Recipe.parse("tflite-fp32"), tmp_path)
    err = info.value
    assert err.op == "aten.bucketize.Tensor"
    assert err.module_path == "block.1"
    assert err.backend == "tflite"
    assert "bucketize" in str(err) and "block.1" in str(err) and "another format" in str(err)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bad_inputs_are_refused_with_where(tmp_path: Path) -> None:
    model, inputs = tiny_convnet()
    with pytest.raises(ConfigError, match=r"not a tensor.*example_inputs\[0\]"):
        TFLiteConverter().convert(model, ([1.0],), Recipe.parse("tflite-fp32"), tmp_path)
    dit = DiTWrapper(tiny_dit()).eval()
    latents, t, label = tiny_dit_inputs()
    with pytest.raises(ConfigError, match="int32 range"):
        TFLiteConverter().convert(dit, (latents, t + 2**40, label), Recipe.parse("tflite-fp32"), tmp_path)
    with pytest.raises(ConfigError, match="builds format tflite"):
        TFLiteConverter().convert(model, inputs, Recipe.parse("coreml-fp16"), tmp_path)


def test_a_model_over_the_flatbuffer_limit_is_refused_before_any_work(monkeypatch, tmp_path):
    import mobilekit
    import mobilekit.converters.tflite as tfl

    model, inputs = tiny_convnet()
    monkeypatch.setattr(tfl, "FLATBUFFER_LIMIT", 1024)
    monkeypatch.setattr(tfl, "require", lambda *a, **k: pytest.fail("conversion started"))
    with pytest.raises(mobilekit.ConfigError, match="TFLite flatbuffers hold at most 2 GB") as info:
        mobilekit.export(model, inputs, targets=["pixel-8"], formats=["tflite"], precision="int8-dynamic",
                         out_dir=tmp_path / "o", cache_dir=tmp_path / "c")
    assert "onnx-fp32 (external weights)" in info.value.fix


def test_calibration_ranges_merge_as_min_max_over_batches() -> None:
    """ai-edge-quantizer averages ranges across the batches of one calibrate call (0.95 on the
    earlier ones); each batch is calibrated alone and the ranges merged, so no batch is clipped."""
    from mobilekit.converters.tflite import _merge_ranges

    a = {"x": {"min": np.array([-1.0]), "max": np.array([1.0])}, "only_a": {"min": np.array([0.0]),
                                                                          "max": np.array([2.0])}}
    b = {"x": {"min": np.array([-3.0]), "max": np.array([0.5])}}
    merged = _merge_ranges([a, b])
    assert merged["x"]["min"].tolist() == [-3.0] and merged["x"]["max"].tolist() == [1.0]
    assert merged["only_a"]["max"].tolist() == [2.0]
    assert a["x"]["min"].tolist() == [-1.0]  # the inputs are not modified




@pytest.mark.slow
def test_float_modules_stay_float_and_only_they(tmp_path: Path) -> None:
    from mobilekit.estimation.precision import read_tflite_precisions

    torch.manual_seed(0)
    model, x = ConvStack().eval(), torch.randn(1, 8, 16, 16)
    for precision in ("int8-weight", "int8-dynamic"):
        work = tmp_path / precision
        work.mkdir()
        res = TFLiteConverter().convert(model, (x,), Recipe.parse(f"tflite-{precision}"), work,
                                        float_modules=["blocks.1", "blocks.7"])
        counts = read_tflite_precisions(work / res.filename)["conv"]
        assert counts == {"fp32": 2, precision: 9}, counts
        assert not [n for n in res.notes if "float_modules" in n]  # both were found in the graph


def test_float_modules_naming_no_module_is_refused(tmp_path: Path) -> None:
    model, x = ConvStack().eval(), torch.randn(1, 8, 16, 16)
    with pytest.raises(ConfigError, match=r"no module 'blocks\.99'"):
        TFLiteConverter().convert(model, (x,), Recipe.parse("tflite-int8-weight"), tmp_path,
                                  float_modules=["blocks.99"])
