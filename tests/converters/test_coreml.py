"""Core ML converter: real coremltools exports, validated structurally (Linux has no Core ML runtime)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("coremltools", reason="install with: pip install 'mobilekit[coreml]'")

from mobilekit.converters import get_converter  # noqa: E402
from mobilekit.converters.coreml import CoreMLConverter, save_multifunction, validate_mlpackage  # noqa: E402
from mobilekit.artifact import size_of  # noqa: E402
from mobilekit.errors import ConfigError, ExportError, UnsupportedOpError  # noqa: E402
from mobilekit.recipe import Recipe  # noqa: E402
from tests.fixtures.models import DiTWrapper, tiny_convnet, tiny_dit, tiny_dit_inputs, tiny_gan  # noqa: E402

pytestmark = [pytest.mark.backend_coreml, pytest.mark.xdist_group("coreml")]
DIT_INPUTS = [("latents", (1, 4, 8, 8)), ("timestep", (1,)), ("class_labels", (1,))]


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    return {"convnet": tiny_convnet(), "dit": (DiTWrapper(tiny_dit()).eval(), tiny_dit_inputs()), "gan": tiny_gan()}


@pytest.fixture(scope="module")
def exports(models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Export (model, precision[, deployment target]) once per module, on first use."""
    done: dict[tuple[str, str, str], tuple[Path, Any]] = {}

    def get(name: str, precision: str, target: str = "iOS17") -> tuple[Path, Any]:
        key = (name, precision, target)
        if key not in done:
            model, inputs = models[name]
            work = tmp_path_factory.mktemp(f"coreml-{name}-{precision}-{target}")
            recipe = Recipe.parse(f"coreml-{precision}", deployment_target=target)
            res = CoreMLConverter().convert(model, inputs, recipe, work)
            done[key] = (work / res.filename, res)
        return done[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-weight"])
def test_dit_package_is_a_valid_ml_program(exports: Any, precision: str) -> None:
    path, res = exports("dit", precision)
    assert res.filename.endswith(".mlpackage") and path.is_dir()
    assert res.input_names == ["latents", "timestep", "class_labels"]
    assert res.output_names == ["output"]
    assert res.input_dtypes == ["float32", "int32", "int32"]
    assert set(res.stages) >= {"prepare", "lower", "serialize", "validate"}
    assert any(note.startswith("structurally valid mlProgram") for note in res.notes)
    info = validate_mlpackage(path, inputs=DIT_INPUTS, outputs=[("output", (1, 4, 8, 8))])
    assert info["status"] == "structurally-valid"
    assert info["functions"] == ["main"]
    assert [i["dtype"] for i in info["inputs"]] == ["float32", "int32", "int32"]
    assert info["outputs"][0]["dtype"] == "float32"  # float32 I/O even for fp16 compute
    assert info["op_types"].get("linear", 0) + info["op_types"].get("matmul", 0) >= 8
    assert info["op_count"] > 50
    if sys.platform != "darwin":
        assert info["parity"] == "not-run: needs macOS"
        assert any("needs macOS" in note for note in res.notes)
    expected = {"fp32": ["fp32"], "fp16": ["fp16"], "int8-weight": ["fp16", "int8"]}[precision]
    assert info["weight_dtypes"] == expected
    assert info["quantized"] is (precision == "int8-weight")
    if precision == "int8-weight":
        assert any(t.startswith("constexpr_") for t in info["op_types"])
        assert info["weight_bytes"]["int8"] > info["weight_bytes"]["fp16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnet", "dit", "gan"])
def test_sizes_shrink_int8_weight_below_fp16_below_fp32(exports: Any, name: str) -> None:
    size = {p: size_of(exports(name, p)[0]) for p in ("fp32", "fp16", "int8-weight")}
    weights = {p: validate_mlpackage(exports(name, p)[0])["weights_file_bytes"] for p in size}
    assert weights["int8-weight"] < weights["fp16"] < weights["fp32"], weights
    if name != "convnet":  # the convnet's weights are too small to outweigh the spec itself
        assert size["int8-weight"] < size["fp16"] < size["fp32"], size


@pytest.mark.slow
def test_gan_generator_converts(exports: Any) -> None:
    path, res = exports("gan", "fp16")
    assert res.input_names == ["image", "text_embeds"]
    info = validate_mlpackage(path, inputs=[("image", (1, 3, 64, 64)), ("text_embeds", None)])
    assert info["op_types"]["conv"] >= 4 and info["weight_dtypes"] == ["fp16"]


@pytest.mark.slow
def test_deployment_target_and_compute_units_reach_the_package(models: dict[str, Any], tmp_path: Path) -> None:
    model, inputs = models["convnet"]
    recipe = Recipe.parse("coreml-int8-weight", deployment_target="iOS18", compute_units="CPU_AND_NE")
    res = CoreMLConverter().convert(model, inputs, recipe, tmp_path)
    info = validate_mlpackage(tmp_path / res.filename)
    assert info["spec_version"] == 9  # iOS18
    assert any(t == "constexpr_blockwise_shift_scale" for t in info["op_types"])  # iOS18 int8 weight op
    assert info["quantized"] and "int8" in info["weight_dtypes"]
    assert "deployment target iOS18, compute units CPU_AND_NE" in res.notes


def test_supports_refuses_what_core_ml_cannot_build() -> None:
    conv = get_converter("coreml")
    assert isinstance(conv, CoreMLConverter)
    for p in ("fp32", "fp16", "int8-weight"):
        assert conv.supports(Recipe.parse(f"coreml-{p}")), p
    dynamic = conv.supports(Recipe.parse("coreml-int8-dynamic"))
    assert not dynamic and "no dynamic" in dynamic.reason and "int8-weight" in dynamic.reason
    assert "coreml-int8-weight" in dynamic.supported and "coreml-int8-dynamic" not in dynamic.supported
    old = conv.supports(Recipe.parse("coreml-int8-weight", deployment_target="iOS15"))
    assert not old and "iOS16" in old.reason
    bogus = conv.supports(Recipe.parse("coreml-fp16", deployment_target="Android14"))
    assert not bogus and "Android14" in bogus.reason
    units = conv.supports(Recipe.parse("coreml-fp16", compute_units="NPU"))
    assert not units and "CPU_AND_NE" in units.reason


@pytest.mark.skipif(sys.platform == "darwin", reason="int8-static calibrates with the Core ML runtime on macOS")
def test_int8_static_refused_off_macos_with_reason(tmp_path: Path) -> None:
    conv = CoreMLConverter()
    static = conv.supports(Recipe.parse("coreml-int8-static"))
    assert not static and "only on macOS" in static.reason
    assert "coreml-int8-weight" in static.supported
    model, inputs = tiny_convnet()
    with pytest.raises(ConfigError, match="only on macOS") as info:
        conv.convert(model, inputs, Recipe.parse("coreml-int8-static"), tmp_path)
    assert "coreml-int8-weight" in str(info.value)


class _Det(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x.reshape(1, 2, 2)).unsqueeze(-1)


class _WithDet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = torch.nn.Linear(4, 4)
        self.block = torch.nn.Sequential(torch.nn.ReLU(), _Det())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pre(x))


def test_unsupported_op_names_op_and_module_path(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        CoreMLConverter().convert(_WithDet().eval(), (torch.randn(1, 4),), Recipe.parse("coreml-fp32"), tmp_path)
    err = info.value
    assert err.op == "aten.linalg_det.default"
    assert err.module_path == "block.1" and err.backend == "coreml"
    assert "linalg_det" in str(err) and "block.1" in str(err) and "another format" in str(err)
    assert not list(tmp_path.iterdir())


def test_caller_model_is_left_alone(tmp_path: Path) -> None:
    model, inputs = tiny_convnet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    CoreMLConverter().convert(model, inputs, Recipe.parse("coreml-fp16"), tmp_path)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_validate_rejects_broken_or_mismatched_packages(exports: Any, tmp_path: Path) -> None:
    path, _ = exports("convnet", "fp16")
    with pytest.raises(ExportError, match="should be named 'image'"):
        validate_mlpackage(path, inputs=[("image", (1, 3, 16, 16))])
    with pytest.raises(ExportError, match=r"shape \(1, 3, 16, 16\), expected \(1, 3, 32, 32\)"):
        validate_mlpackage(path, inputs=[("x", (1, 3, 32, 32))])
    with pytest.raises(ExportError, match=r"1 outputs \[.output.\], expected 2"):
        validate_mlpackage(path, outputs=[("a", None), ("b", None)])
    with pytest.raises(ExportError, match="no Manifest.json"):
        validate_mlpackage(tmp_path)
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(path, broken)
    for weights in broken.rglob("weights"):
        shutil.rmtree(weights)
    with pytest.raises(ExportError, match="no weights file") as info:
        validate_mlpackage(broken)
    assert info.value.where == str(broken) and "re-export" in str(info.value)
    manifest = json.loads((path / "Manifest.json").read_text())
    assert manifest["rootModelIdentifier"] in manifest["itemInfoEntries"]


@pytest.mark.slow
def test_save_multifunction_shares_weights(tmp_path: Path) -> None:
    """Two packages over one base (as LoRA adapters will be) merge into one smaller package."""
    base, inputs = tiny_convnet()
    variant, _ = tiny_convnet()
    with torch.no_grad():
        variant.head.weight.add_(0.5)  # only the head differs: the convs are shared
    recipe = Recipe.parse("coreml-fp16", deployment_target="iOS18")
    paths = {}
    for name, model in (("base", base), ("styled", variant)):
        res = CoreMLConverter().convert(model, inputs, recipe, tmp_path / name)
        paths[name] = tmp_path / name / res.filename
    dest = save_multifunction(paths, tmp_path / "out" / "multi.mlpackage")
    assert dest == tmp_path / "out" / "multi.mlpackage"
    info = validate_mlpackage(dest, inputs=[("x", (1, 3, 16, 16))])
    assert info["functions"] == ["base", "styled"] and info["default_function"] == "base"
    assert size_of(dest) < sum(size_of(p) for p in paths.values())
    assert info["weights_file_bytes"] < sum(validate_mlpackage(p)["weights_file_bytes"] for p in paths.values())
    assert [p.name for p in dest.parent.iterdir()] == ["multi.mlpackage"]  # no temporaries left
    with pytest.raises(ConfigError, match="not one of"):
        save_multifunction(paths, tmp_path / "x.mlpackage", default="nope")
    with pytest.raises(ConfigError, match="not an .mlpackage"):
        save_multifunction({"a": tmp_path}, tmp_path / "y.mlpackage")


@pytest.mark.macos
@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "darwin", reason="the Core ML runtime exists only on macOS")
def test_parity_on_macos(exports: Any, models: dict[str, Any]) -> None:  # pragma: no cover - macOS only
    from mobilekit.parity import compare, tolerance_for
    from mobilekit.runtime import run_artifact

    model, inputs = models["dit"]
    with torch.no_grad():
        reference = model(*inputs)
    for precision in ("fp32", "fp16", "int8-weight"):
        path, _ = exports("dit", precision)
        out = run_artifact(path, [t.numpy() for t in inputs])
        parity = compare([reference.numpy()], out, tolerance=tolerance_for(precision), runtime="coreml")
        assert parity.status == "pass", (precision, parity.reason)


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the package runs and parity is numeric")
def test_export_holds_the_package_io_to_the_model_off_macos(tmp_path: Path) -> None:
    import mobilekit

    model, x = tiny_convnet()
    m = mobilekit.export(model, x, targets=["iphone-15-pro"], formats=["coreml"], precision="fp16",
                         out_dir=tmp_path, use_cache=False)
    p = m.artifacts[0].parity
    assert p.status == "not-run" and "inputs and outputs match the model's" in p.reason
