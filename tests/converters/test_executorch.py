"""ExecuTorch converter: real .pte exports run by the ExecuTorch runtime, compared with PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.exir", reason="install with: pip install 'mobilekit[executorch]'")

from mobilekit.converters import get_converter  # noqa: E402
from mobilekit.converters.executorch import ExecuTorchConverter  # noqa: E402
from mobilekit.errors import ConfigError, ExportError, RuntimeCrashError, UnsupportedOpError  # noqa: E402
from mobilekit.parity import compare, tolerance_for  # noqa: E402
from mobilekit.recipe import Recipe  # noqa: E402
from mobilekit.runtime import run_artifact  # noqa: E402
from mobilekit.runtime.runners import pte_needs_backend  # noqa: E402
from tests.converters._models import ConvStack  # noqa: E402
from tests.fixtures.models import (DiTWrapper, reference_outputs, tiny_convnet, tiny_dit,  # noqa: E402
                                   tiny_dit_inputs, tiny_gan)

pytestmark = [pytest.mark.backend_executorch, pytest.mark.xdist_group("executorch")]


class WideNet(torch.nn.Module):
    """Weights dominate the file (≈70k parameters), so quantization must shrink it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(32, 256)
        self.fc2 = torch.nn.Linear(256, 256)
        self.out = torch.nn.Linear(256, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(y)))))


class Bucketize(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("edges", torch.tensor([-0.5, 0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(x, self.edges).to(x.dtype) + x


class CallsBucketize(torch.nn.Module):
    """A model whose ``blocks.1`` calls torch.bucketize, which ExecuTorch cannot lower."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.blocks = torch.nn.Sequential(torch.nn.ReLU(), Bucketize())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.proj(x))


class JointValues(torch.nn.Module):
    """Flux's joint attention values: two linears, each unflattened to heads, concatenated.

    ``unflatten`` does not share its input's observer in the XNNPACK quantizer, while ``cat`` makes
    its inputs share one: the reshape is dequantized with the linear's scale and requantized with
    the cat's, which XNNPACK refuses to load ("Failed to create squeeze node").
    """

    def __init__(self) -> None:
        super().__init__()
        self.to_v = torch.nn.Linear(32, 32)
        self.add_v = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.add_v(context).unflatten(-1, (2, -1)), self.to_v(x).unflatten(-1, (2, -1))], dim=1)


class JointBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = JointValues()
        self.out = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.out(self.attn(x, context).flatten(2))


def _wide() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return WideNet().eval(), (torch.randn(1, 3, 8, 8),)


MODELS: dict[str, Any] = {
    "convnet": tiny_convnet,
    "wide": _wide,
    "dit": lambda: (DiTWrapper(tiny_dit()).eval(), tiny_dit_inputs()),
    "gan": tiny_gan,
}
# XNNPACK recipes that run on this host: every precision on the fast convnet, the DiT and GAN on the main ones.
RUN_CASES = [("convnet", p) for p in ("fp32", "fp16", "int8-dynamic", "int8-static")] + \
            [("dit", p) for p in ("fp32", "int8-dynamic", "int8-static")] + \
            [("gan", "fp32"), ("gan", "int8-dynamic"), ("gan", "int8-static")]


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    return {name: build() for name, build in MODELS.items()}


@pytest.fixture(scope="module")
def exports(models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Export (model, recipe name, external weights) once per module, on first use."""
    done: dict[tuple[str, str, bool], tuple[Path, Any]] = {}

    def get(name: str, recipe: str, external: bool = False) -> tuple[Path, Any]:
        key = (name, recipe, external)
        if key not in done:
            model, inputs = models[name]
            work = tmp_path_factory.mktemp(f"et-{name}-{recipe}-{'ext' if external else 'int'}")
            res = ExecuTorchConverter(external_weights=external).convert(model, inputs, Recipe.parse(recipe), work)
            done[key] = (work, res)
        return done[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("name", "precision"), RUN_CASES, ids=[f"{n}-{p}" for n, p in RUN_CASES])
def test_xnnpack_pte_runs_in_executorch_and_matches_pytorch(models: dict[str, Any], exports: Any, name: str,
                                                            precision: str) -> None:
    model, inputs = models[name]
    work, res = exports(name, f"executorch-xnnpack-{precision}")
    path = work / res.filename
    assert path.suffix == ".pte" and path.stat().st_size > 0
    assert res.extra_files == []
    assert list(res.stages) == ["prepare", "quantize", "lower", "serialize"]
    assert any("xnnpack partition" in n or "fully delegated" in n for n in res.notes), res.notes
    outputs = run_artifact(path, [t.numpy() for t in inputs])
    tol = tolerance_for(precision)  # fp32: cosine ≥ 0.9999 / 60 dB; fp16 0.999 / 40; int8-static 0.95 / 15
    parity = compare(reference_outputs(model, inputs), outputs, tolerance=tol, runtime="executorch")
    assert parity.status == "pass", parity.reason
    if precision == "fp32":
        np.testing.assert_allclose(outputs[0], reference_outputs(model, inputs)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_io_names_come_from_forward(exports: Any) -> None:
    _, res = exports("dit", "executorch-xnnpack-fp32")
    assert res.input_names == ["latents", "timestep", "class_labels"]
    assert res.output_names == ["output"]
    _, res = exports("convnet", "executorch-xnnpack-fp16")  # fp16 wraps the model in *args; names must survive
    assert res.input_names == ["x"]
    assert any("float16" in n for n in res.notes)


@pytest.mark.slow
def test_quantized_pte_is_smaller_than_fp32(exports: Any) -> None:
    size = {p: (lambda w, r: (w / r.filename).stat().st_size)(*exports("wide", f"executorch-xnnpack-{p}"))
            for p in ("fp32", "fp16", "int8-dynamic", "int8-static")}
    assert size["fp16"] < size["fp32"], size
    assert size["int8-dynamic"] < size["fp16"], size
    assert size["int8-static"] < size["fp16"], size


@pytest.mark.slow
def test_int8_static_uses_the_calibration_batches(models: dict[str, Any], tmp_path: Path) -> None:
    model, inputs = models["wide"]
    g = torch.Generator().manual_seed(3)
    calibration = [(torch.randn(1, 3, 8, 8, generator=g),) for _ in range(4)]
    res = ExecuTorchConverter().convert(model, inputs, Recipe.parse("executorch-xnnpack-int8-static"), tmp_path,
                                        calibration=calibration)
    assert any("calibrated on 4 batch(es)" in n for n in res.notes), res.notes
    x = calibration[2]
    out = run_artifact(tmp_path / res.filename, [x[0].numpy()])
    parity = compare(reference_outputs(model, x), out, tolerance=tolerance_for("int8-static"), runtime="executorch")
    assert parity.status == "pass", parity.reason


def test_int8_static_reshape_between_two_encodings_loads_and_matches(tmp_path: Path) -> None:
    # Flux's executorch-xnnpack-int8-static failed to load in the runtime before the reshape was
    # given one encoding (the change of scale moved in front of it).
    torch.manual_seed(0)
    model, inputs = JointBlock().eval(), (torch.randn(1, 16, 32), 3 * torch.randn(1, 8, 32))
    res = ExecuTorchConverter().convert(model, inputs, Recipe.parse("executorch-xnnpack-int8-static"), tmp_path)
    got = run_artifact(tmp_path / res.filename, [t.numpy() for t in inputs])
    parity = compare(reference_outputs(model, inputs), got, tolerance=tolerance_for("int8-static"),
                     runtime="executorch")
    assert parity.status == "pass", parity.reason
    note = next(n for n in res.notes if n.startswith("requantized before"))
    assert "1 reshape(s)" in note and " in attn" in note




def test_float_modules_stay_float_and_only_they(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = ConvStack().eval(), torch.randn(1, 8, 16, 16)
    res = ExecuTorchConverter().convert(model, (x,), Recipe.parse("executorch-xnnpack-int8-static"), tmp_path,
                                        float_modules=["blocks.1", "blocks.7"])
    assert res.op_precisions["conv"] == {"float": 2, "int8-static": 9}, res.op_precisions
    got = run_artifact(tmp_path / res.filename, [x.numpy()])
    parity = compare(reference_outputs(model, (x,)), got, tolerance=tolerance_for("int8-static"), runtime="executorch")
    assert parity.status == "pass", parity.reason


def test_float_modules_are_checked_before_any_work(tmp_path: Path) -> None:
    model, x = ConvStack().eval(), torch.randn(1, 8, 16, 16)
    with pytest.raises(ConfigError, match=r"no module 'blocks\.99'"):
        ExecuTorchConverter().convert(model, (x,), Recipe.parse("executorch-xnnpack-int8-static"), tmp_path,
                                      float_modules=["blocks.99"])
    with pytest.raises(ConfigError, match="cannot keep modules in float"):
        ExecuTorchConverter().convert(model, (x,), Recipe.parse("executorch-coreml-int8-static"), tmp_path,
                                      float_modules=["blocks.1"])
    assert not any(tmp_path.iterdir())


def test_bad_calibration_batch_is_refused(models: dict[str, Any], tmp_path: Path) -> None:
    model, inputs = models["convnet"]
    with pytest.raises(ConfigError, match=r"calibration\[1\] has 2 inputs"):
        ExecuTorchConverter().convert(model, inputs, Recipe.parse("executorch-xnnpack-int8-static"), tmp_path,
                                      calibration=[inputs, (inputs[0], inputs[0])])


@pytest.mark.slow
def test_external_weights_go_to_ptd_and_run_with_data_path(models: dict[str, Any], exports: Any) -> None:
    model, inputs = models["wide"]
    work, res = exports("wide", "executorch-xnnpack-fp32", external=True)
    inline_work, inline = exports("wide", "executorch-xnnpack-fp32")
    assert res.extra_files == ["model.ptd"]
    pte, ptd = work / res.filename, work / res.extra_files[0]
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert ptd.stat().st_size >= weight_bytes  # every fp32 weight lives in the .ptd
    assert pte.stat().st_size < (inline_work / inline.filename).stat().st_size - weight_bytes // 2
    outputs = run_artifact(pte, [t.numpy() for t in inputs], data_path=str(ptd))
    np.testing.assert_allclose(outputs[0], reference_outputs(model, inputs)[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeCrashError):
        run_artifact(pte, [t.numpy() for t in inputs])  # the program alone has no weights


@pytest.mark.slow
def test_external_weights_with_int8_dynamic(models: dict[str, Any], exports: Any) -> None:
    model, inputs = models["wide"]
    work, res = exports("wide", "executorch-xnnpack-int8-dynamic", external=True)
    assert res.extra_files == ["model.ptd"]
    outputs = run_artifact(work / res.filename, [t.numpy() for t in inputs], data_path=str(work / "model.ptd"))
    parity = compare(reference_outputs(model, inputs), outputs, tolerance=tolerance_for("int8-dynamic"),
                     runtime="executorch")
    assert parity.status == "pass", parity.reason


COREML_CASES = [("convnet", "fp32"), ("convnet", "int8-weight"), ("convnet", "int8-static"), ("dit", "fp16"),
                ("dit", "int8-weight")]


@pytest.mark.slow
@pytest.mark.backend_coreml
@pytest.mark.parametrize(("name", "precision"), COREML_CASES, ids=[f"{n}-{p}" for n, p in COREML_CASES])
def test_coreml_delegate_pte_holds_the_coreml_backend(exports: Any, name: str, precision: str) -> None:
    pytest.importorskip("coremltools")
    work, res = exports(name, f"executorch-coreml-{precision}")
    path = work / res.filename
    data = path.read_bytes()
    assert b"CoreMLBackend" in data
    assert not any("nothing was delegated" in n for n in res.notes), res.notes
    import sys

    if sys.platform != "darwin":  # the Linux ExecuTorch runtime has no Core ML backend: parity is macOS-only
        assert pte_needs_backend(path) == "CoreMLBackend"


def test_coreml_deployment_target_is_checked(models: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    model, inputs = models["convnet"]
    with pytest.raises(ConfigError, match="deployment target iOS17 or later") as info:
        ExecuTorchConverter().convert(model, inputs, Recipe.parse("executorch-coreml-int8-static",
                                                                  deployment_target="iOS16"), tmp_path)
    assert info.value.where == "deployment_target"
    with pytest.raises(ConfigError, match="unknown Core ML deployment target"):
        ExecuTorchConverter().convert(model, inputs, Recipe.parse("executorch-coreml-fp16",
                                                                  deployment_target="android14"), tmp_path)
    with pytest.raises(ConfigError, match="compute units") as info:
        ExecuTorchConverter().convert(model, inputs, Recipe.parse("executorch-coreml-fp16",
                                                                  compute_units="GPU_ONLY"), tmp_path)
    assert info.value.where == "compute_units"


def test_supports_refuses_with_reason_and_alternatives() -> None:
    conv = get_converter("executorch")
    assert isinstance(conv, ExecuTorchConverter)
    for p in ("fp32", "fp16", "int8-dynamic", "int8-static"):
        assert conv.supports(Recipe.parse(f"executorch-xnnpack-{p}")), p
    for p in ("fp32", "fp16", "int8-weight", "int8-static"):
        assert conv.supports(Recipe.parse(f"executorch-coreml-{p}")), p
    no = conv.supports(Recipe.parse("executorch-xnnpack-int8-weight"))
    assert not no and "weight-only" in no.reason and "dequantize_affine" in no.reason
    assert "executorch-xnnpack-int8-dynamic" in no.supported and "executorch-coreml-int8-weight" in no.supported
    no = conv.supports(Recipe.parse("executorch-coreml-int8-dynamic"))
    assert not no and "run-time activation quantization" in no.reason
    no = conv.supports(Recipe.parse("onnx-fp32"))
    assert not no and "not onnx" in no.reason


def test_convert_refuses_an_unsupported_recipe(models: dict[str, Any], tmp_path: Path) -> None:
    model, inputs = models["convnet"]
    with pytest.raises(ConfigError, match="cannot build int8-weight") as info:
        ExecuTorchConverter().convert(model, inputs, Recipe.parse("executorch-xnnpack-int8-weight"), tmp_path)
    assert "executorch-xnnpack-int8-dynamic" in (info.value.fix or "")
    assert not any(tmp_path.iterdir())


def test_unsupported_op_names_op_and_module_path(tmp_path: Path) -> None:
    model, x = CallsBucketize().eval(), (torch.randn(2, 8),)
    with pytest.raises(UnsupportedOpError) as info:
        ExecuTorchConverter().convert(model, x, Recipe.parse("executorch-xnnpack-fp32"), tmp_path)
    err = info.value
    assert err.op is not None and "bucketize" in err.op
    assert err.module_path == "blocks.1"
    assert "blocks.1" in str(err) and "bucketize" in str(err)


def test_bad_example_inputs_name_the_entry(tmp_path: Path) -> None:
    model, inputs = tiny_convnet()
    with pytest.raises(ConfigError, match=r"example_inputs\[1\] is a float") as info:
        ExecuTorchConverter().convert(model, (inputs[0], 1.0), Recipe.parse("executorch-xnnpack-fp32"), tmp_path)
    assert info.value.where == "example_inputs[1]"


def test_caller_model_is_left_alone(tmp_path: Path) -> None:
    model, inputs = tiny_convnet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ExecuTorchConverter().convert(model, inputs, Recipe.parse("executorch-xnnpack-int8-dynamic"), tmp_path)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class ConvBNConv1d(torch.nn.Module):
    """Conv + BatchNorm and a Conv1d: XNNPACK's preprocess passes replace these weights (batch norm
    fused into the conv, the 1-d kernel unsqueezed to 2-d) in the program they are handed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv1d = torch.nn.Conv1d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.relu(self.conv1d(y.flatten(2)))
        return self.head(y.mean(dim=2))


def _conv_bn() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = ConvBNConv1d()
    with torch.no_grad():  # non-trivial statistics, so a fused batch norm changes the conv's weights
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval(), (torch.randn(1, 3, 8, 8),)


def test_preprocess_copy_shares_the_weights_and_is_put_back() -> None:
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    from mobilekit.converters.executorch import _preprocess_shares_weights

    model, inputs = _conv_bn()
    program = torch.export.export(model, inputs, strict=False)
    with _preprocess_shares_weights(XnnpackBackend):
        shared = XnnpackBackend.copy_exported_program_for_preprocess(program, [])
    default = XnnpackBackend.copy_exported_program_for_preprocess(program, [])
    assert shared.graph_module is not program.graph_module
    assert shared.state_dict is not program.state_dict  # passes may replace entries of the copy's dict
    assert all(shared.state_dict[k] is t for k, t in program.state_dict.items())
    # outside the context, ExecuTorch's own deep copy again
    assert all(default.state_dict[k] is not t for k, t in program.state_dict.items())
    assert "copy_exported_program_for_preprocess" not in XnnpackBackend.__dict__


@pytest.mark.parametrize("precision", ["fp32", "int8-dynamic"])
def test_shared_weights_build_the_same_pte_and_leave_the_model_alone(tmp_path: Path, precision: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    import mobilekit.converters.executorch as et

    model, inputs = _conv_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = Recipe.parse(f"executorch-xnnpack-{precision}")
    (tmp_path / "shared").mkdir()
    shared = ExecuTorchConverter().convert(model, inputs, recipe, tmp_path / "shared")
    for k, v in model.state_dict().items():  # the preprocess passes got the caller's tensors: none was written
        assert torch.equal(v, before[k]), k
    monkeypatch.setattr(et, "_preprocess_shares_weights", lambda _cls: contextlib.nullcontext())
    (tmp_path / "copied").mkdir()
    copied = ExecuTorchConverter().convert(model, inputs, recipe, tmp_path / "copied")
    assert (tmp_path / "shared" / shared.filename).read_bytes() == (tmp_path / "copied" / copied.filename).read_bytes()


@pytest.mark.parametrize("precision", ["fp32", "int8-dynamic"])
def test_convert_leaves_no_lowered_program_alive(tmp_path: Path, precision: str) -> None:
    """ExecuTorch's and torchao's globals (caches, loggers) kept the lowered program, and with it the
    serialized weights, after convert returned; at real size that memory was still held while the
    parity child ran the .pte."""
    import gc

    from executorch.exir.lowered_backend_module import LoweredBackendModule

    def graph_modules() -> set[int]:  # those holding weights (pattern graphs cached by partitioners hold none)
        return {id(o) for o in gc.get_objects() if isinstance(o, torch.fx.GraphModule) and o.state_dict()}

    model, inputs = _conv_bn()
    gc.collect()
    existing = graph_modules()
    ExecuTorchConverter().convert(model, inputs, Recipe.parse(f"executorch-xnnpack-{precision}"), tmp_path)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, LoweredBackendModule)]
    assert not graph_modules() - existing
