"""Adapter packaging: fused and separate adapters agree with PyTorch through the real runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilekit.adapters import apply_lora, export_adapters, load_adapters
from mobilekit.errors import ConfigError
from mobilekit.train.e2gan.lora import LoRAConfig, attach_lora, lora_targets, make_adapter, save_adapter
from mobilekit.train.e2gan.models import E2GANConfig, build_generator, sha256_of_state


pytestmark = pytest.mark.usefixtures("one_thread")


def _base() -> torch.nn.Module:
    return build_generator(E2GANConfig.tiny(), seed=0).eval()


def _adapter(base: torch.nn.Module, ranks: dict[str, int], seed: int, concept: str):
    model = attach_lora(base, LoRAConfig(ranks=ranks))
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return make_adapter(model, LoRAConfig(ranks=ranks), concept=concept, prompt=f"make it {concept}",
                        base_sha256=sha256_of_state(base.state_dict()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny GAN base and two adapters (different layers and ranks) saved as directories."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("adapters")
    base = _base()
    names = lora_targets(base)
    dirs = {"sepia": save_adapter(_adapter(base, {n: 2 for n in names}, 1, "sepia"), root / "sepia"),
            "sketch": save_adapter(_adapter(base, {n: 1 for n in names[:6]}, 2, "sketch"), root / "sketch")}
    return base, dirs, base.example_inputs(), root


def _references(base, dirs, x):
    ads = load_adapters(dirs, base)
    with torch.no_grad():
        refs = {name: apply_lora(base, ad, fuse=False)(*x).numpy() for name, ad in ads.items()}
        refs[None] = base(*x).numpy()
    return refs


def _check_against_pytorch(manifest, base, dirs, x):
    """Re-run every artifact here with its runtime and compare with the unfused PyTorch LoRA model."""
    from mobilekit.runtime import run_artifact

    refs = _references(base, dirs, x)
    assert {a.adapter for a in manifest.artifacts} == {None, *dirs}
    for a in manifest.artifacts:
        options = {}
        ptd = [f for f in a.extra_files if f.endswith(".ptd")]
        if ptd:
            options["data_path"] = str(manifest.root / ptd[0])
        sig = [n.split(": ", 1)[1] for n in a.notes if n.startswith("signature: ")]
        if sig:
            options["signature"] = sig[0]
        out = run_artifact(manifest.path_of(a), [t.numpy() for t in x], **options)[0]
        ref = refs[a.adapter]
        assert a.parity.status == "pass", (a.path, a.parity)
        assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max()), a.path
        # each adapter really changes the output, so agreement is not trivial
        if a.adapter is not None:
            assert np.abs(ref - refs[None]).max() > 1e-2


def _sidecar(out: Path) -> dict:
    return json.loads((out / "adapters.json").read_text())


@pytest.mark.slow
@pytest.mark.backend_executorch
def test_executorch_separate_shares_one_ptd_fused_and_separate_match_pytorch(setup, tmp_path):
    base, dirs, x, root = setup
    before = {k: v.clone() for k, v in base.state_dict().items()}
    sep = export_adapters(base, dirs, x, targets=["pixel-8"], out_dir=tmp_path / "sep", formats=["executorch"],
                          precision="fp32", policy="separate", cache_dir=root / "cache", measure_fused=False)
    ptds = {f for a in sep.artifacts for f in a.extra_files if f.endswith(".ptd")}
    assert len(ptds) == 1, ptds  # one shared weight file, no per-adapter copy
    assert len({a.path for a in sep.artifacts}) == 3  # base.pte + one .pte per adapter
    assert all(a.recipe.adapter_policy == "separate" for a in sep.artifacts)
    _check_against_pytorch(sep, base, dirs, x)
    rec = _sidecar(tmp_path / "sep")["recipes"][0]
    assert rec["sharing"] == "program-data-separation" and rec["shares_weights"]
    for name in dirs:
        # an adapter's own program is smaller than the shared base weights plus the base program
        assert rec["variants"][name]["own_bytes"] < rec["shared_bytes"] + rec["variants"]["base"]["own_bytes"]

    fused = export_adapters(base, dirs, x, targets=["pixel-8"], out_dir=tmp_path / "fused", formats=["executorch"],
                            precision="fp32", policy="fuse", cache_dir=root / "cache")
    assert all(not a.extra_files for a in fused.artifacts)
    assert all(a.recipe.adapter_policy == "fuse" for a in fused.artifacts)
    _check_against_pytorch(fused, base, dirs, x)
    frec = _sidecar(tmp_path / "fused")["recipes"][0]
    assert frec["policy"] == "fuse" and frec["fused_copies"] == 3
    assert rec["separate_total_bytes"] < frec["fused_total_bytes"]
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
@pytest.mark.backend_tflite
def test_tflite_separate_one_signature_per_adapter(setup, tmp_path):
    base, dirs, x, root = setup
    out = tmp_path / "tfl"
    m = export_adapters(base, dirs, x, targets=["pixel-8"], out_dir=out, formats=["tflite"], precision="fp32",
                        policy="separate", cache_dir=root / "cache")
    assert len({a.path for a in m.artifacts}) == 1
    _check_against_pytorch(m, base, dirs, x)
    rec = _sidecar(out)["recipes"][0]
    assert rec["sharing"] == "multi-signature"
    assert rec["separate_total_bytes"] < rec["fused_total_bytes"]
    from mobilekit.errors import RuntimeCrashError
    from mobilekit.runtime import run_artifact

    with pytest.raises(RuntimeCrashError, match="no signature 'nope'.*known signatures: .*sepia"):
        run_artifact(m.path_of(m.artifacts[0]), [t.numpy() for t in x], signature="nope")
    # unchanged base, adapters and recipe: the whole separate build comes from the cache
    again = export_adapters(base, dirs, x, targets=["pixel-8"], out_dir=tmp_path / "tfl2", formats=["tflite"],
                            precision="fp32", policy="separate", cache_dir=root / "cache")
    assert all(a.cached for a in again.artifacts)
    assert [a.sha256 for a in again.artifacts] == [a.sha256 for a in m.artifacts]
    _check_against_pytorch(again, base, dirs, x)


@pytest.mark.slow
@pytest.mark.backend_onnx
def test_onnx_separate_falls_back_to_fused_with_a_note(setup, tmp_path):
    base, dirs, x, root = setup
    out = tmp_path / "onnx"
    m = export_adapters(base, dirs, x, targets=["pixel-8"], out_dir=out, formats=["onnx"], precision="fp32",
                        policy="separate", cache_dir=root / "cache")
    assert len({a.path for a in m.artifacts}) == 3
    for a in m.artifacts:
        assert any("cannot share weights" in n for n in a.notes), a.notes
    _check_against_pytorch(m, base, dirs, x)
    rec = _sidecar(out)["recipes"][0]
    assert rec["policy"] == "fuse" and "ONNX cannot share" in rec["fallback"]


@pytest.mark.slow
@pytest.mark.backend_coreml
def test_coreml_separate_is_one_multifunction_package(setup, tmp_path):
    pytest.importorskip("coremltools")
    from mobilekit.converters.coreml import validate_mlpackage

    base, dirs, x, root = setup
    out = tmp_path / "cml"
    m = export_adapters(base, dirs, x, targets=["iphone-15-pro"], out_dir=out, formats=["coreml"],
                        precision="fp16", policy="separate", measure_fused=False)
    paths = {a.path for a in m.artifacts}
    assert len(paths) == 1 and next(iter(paths)).endswith(".mlpackage")
    info = validate_mlpackage(out / next(iter(paths)))
    assert set(info["functions"]) == {"base", *dirs}
    # one file, several variants: reports must still tell the rows apart
    assert len({a.label for a in m.artifacts}) == len(m.artifacts)
    for a in m.artifacts:
        assert a.parity.status == "not-run" and "macOS" in a.parity.reason
        assert a.recipe.deployment_target == "iOS18"


def test_bad_adapter_directory_is_a_clear_config_error(setup, tmp_path):
    base, dirs, x, _ = setup
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="'broken'.*missing adapter"):
        load_adapters({"broken": tmp_path / "empty"}, base)
    with pytest.raises(ConfigError, match="'nowhere'.*not a directory"):
        export_adapters(base, {"nowhere": tmp_path / "nope"}, x, targets=["pixel-8"], out_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="reserved"):
        load_adapters({"base": dirs["sepia"]}, base)
    with pytest.raises(ConfigError, match="adapter policy"):
        export_adapters(base, dirs, x, targets=["pixel-8"], out_dir=tmp_path / "o", policy="merge")


def test_adapter_trained_on_another_base_is_refused(setup, tmp_path):
    base, dirs, x, _ = setup
    other = build_generator(E2GANConfig.tiny(), seed=1).eval()
    with pytest.raises(ConfigError, match="'sepia'.*another base"):
        export_adapters(other, {"sepia": dirs["sepia"]}, x, targets=["pixel-8"], out_dir=tmp_path / "o")


@pytest.mark.slow
@pytest.mark.backend_onnx
def test_build_entry_with_adapters_exports_fused_onnx(setup, tmp_path):
    from mobilekit.adapters import export_with_adapters
    from mobilekit.build_config import ModelEntry
    from mobilekit.spec import LoadedSpec

    base, dirs, x, root = setup
    spec = LoadedSpec(name="gan", model=base, example_inputs=x, input_names=("image", "text_embeds"))
    entry = ModelEntry(name="gan", spec="builtin:gan-tiny", targets=("pixel-8",), formats=("onnx",),
                       precisions=("fp32",), adapters={"sepia": dirs["sepia"]}, adapter_policy="fuse")
    m = export_with_adapters(spec, entry, out_dir=tmp_path / "gan", cache_dir=root / "cache")
    assert sorted((a.adapter or "") for a in m.artifacts) == ["", "sepia"]
    assert {a.path for a in m.artifacts} == {"gan-onnx-fp32.onnx", "gan-sepia-onnx-fp32.onnx"}
    assert all(a.parity.status == "pass" for a in m.artifacts)
    assert [i.name for i in m.artifacts[0].inputs] == ["image", "text_embeds"]
    from mobilekit.artifact import Manifest

    assert Manifest.read(tmp_path / "gan").artifacts == m.artifacts
