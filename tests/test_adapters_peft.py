"""Adapter packaging for any peft LoRA: diffusers DiT and UNet bases, peft folders and diffusers LoRA files."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mobilekit.adapters import export_adapters
from mobilekit.lora import apply_lora, load_adapters
from mobilekit.errors import ConfigError

peft = pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread")


def _nonzero_b(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _out(model: torch.nn.Module, x: tuple[torch.Tensor, ...]) -> np.ndarray:
    with torch.no_grad():
        out = model(*x)
    return (out.sample if hasattr(out, "sample") else out).numpy()


def _run(manifest, artifact, x) -> np.ndarray:
    from mobilekit.runtime import run_artifact

    ptd = [f for f in artifact.extra_files if f.endswith(".ptd")]
    options = {"data_path": str(manifest.root / ptd[0])} if ptd else {}
    return run_artifact(manifest.path_of(artifact), [t.numpy() for t in x], **options)[0]


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    """A tiny DiT, a peft LoRA on to_q/to_v, and the same LoRA as a peft folder and as diffusers files."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dit")
    base = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2,
                                           sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    x = (torch.randn(1, 4, 8, 8), torch.tensor([3.0]), torch.tensor([1]))
    config = LoraConfig(target_modules=["to_q", "to_v"], r=4, lora_alpha=8)
    lora_model = _nonzero_b(get_peft_model(copy.deepcopy(base), config), seed=1)  # a PeftModel
    lora_model.save_pretrained(root / "peft")
    state = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(lora_model).items()}
    # what diffusers' pipelines write: keys prefixed by the component, no config (alpha = rank)
    diffusers.loaders.SD3LoraLoaderMixin.save_lora_weights(root / "diffusers", transformer_lora_layers=state)
    old = {k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v
           for k, v in state.items()}
    old.update({k.split(".lora.")[0] + ".alpha": torch.tensor(8.0) for k in old if ".lora.down." in k})
    save_file(old, str(root / "old_style.safetensors"))
    return base, x, lora_model, root


@pytest.mark.slow
@pytest.mark.backend_onnx
def test_dit_fused_onnx_from_every_format_matches_pytorch(dit, tmp_path):
    base, x, lora_model, root = dit
    before = {k: v.clone() for k, v in base.state_dict().items()}
    want = _out(lora_model, x)
    assert np.abs(want - _out(base, x)).max() > 1e-2  # the adapter really changes the output
    sources = {"mem": lora_model, "folder": root / "peft", "old": root / "old_style.safetensors"}
    ads = load_adapters({**sources, "pipe": root / "diffusers"}, base)
    for name in sources:
        assert np.abs(_out(apply_lora(base, ads[name], fuse=True), x) - want).max() < 1e-5, name
    # the diffusers pipeline file stores no alpha: diffusers then reads alpha = rank (scale 1, peft had 8/4)
    assert set(ads["pipe"].weights) == set(ads["folder"].weights)
    assert all(a == 4 for a in ads["pipe"].config.alpha_pattern.values())
    halved = {k: v / 2 if ".lora_B." in k else v for k, v in ads["folder"].weights.items()}
    assert all(torch.equal(ads["pipe"].weights[k], ads["folder"].weights[k]) for k in halved)
    pipe = _out(apply_lora(base, ads["pipe"], fuse=True), x)
    assert np.abs(pipe - _out(apply_lora(base, replace(ads["folder"], weights=halved), fuse=True), x)).max() < 1e-5

    m = export_adapters(base, sources, x, targets=["pixel-8"], out_dir=tmp_path / "o", formats=["onnx"],
                        precision="fp32", policy="fuse", cache_dir=tmp_path / "cache", parity_samples=2)
    assert sorted(a.adapter or "" for a in m.artifacts) == ["", "folder", "mem", "old"]
    for a in m.artifacts:
        assert a.parity.status == "pass" and a.parity.inputs == 2 and a.parity.held_out, (a.path, a.parity)
        assert not any("lora" in i.name for i in a.inputs)
        got = _run(m, a, x)
        assert np.abs(got - (want if a.adapter else _out(base, x))).max() < 1e-4, a.path
    sidecar = json.loads((tmp_path / "o" / "adapters.json").read_text())
    assert sidecar["recipes"][0]["fused_copies"] == 4
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
@pytest.mark.backend_executorch
def test_dit_separate_executorch_shares_the_base_and_matches_fused(dit, tmp_path):
    base, x, lora_model, root = dit
    m = export_adapters(base, {"style": root / "peft"}, x, targets=["pixel-8"], out_dir=tmp_path / "sep",
                        formats=["executorch"], precision="fp32", policy="separate", measure_fused=False,
                        parity_samples=2)
    assert {a.adapter for a in m.artifacts} == {None, "style"}
    ptds = {f for a in m.artifacts for f in a.extra_files if f.endswith(".ptd")}
    assert len(ptds) == 1  # one shared base.ptd
    fused = _out(apply_lora(base, load_adapters({"style": root / "peft"}, base)["style"], fuse=True), x)
    for a in m.artifacts:
        assert a.parity.status == "pass" and a.parity.inputs == 2 and a.parity.held_out, (a.path, a.parity)
        got = _run(m, a, x)
        assert np.abs(got - (fused if a.adapter else _out(base, x))).max() < 1e-4, a.path
    rec = json.loads((tmp_path / "sep" / "adapters.json").read_text())["recipes"][0]
    assert rec["sharing"] == "program-data-separation"
    assert rec["variants"]["style"]["own_bytes"] < rec["shared_bytes"]


@pytest.mark.slow
@pytest.mark.backend_onnx
def test_unet_with_diffusers_lora_file_fuses_to_onnx(tmp_path):
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2).eval()
    x = (torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 4, 8))
    lora_unet = copy.deepcopy(unet)
    lora_unet.add_adapter(LoraConfig(target_modules=["to_q", "to_v", "conv1"], r=2, lora_alpha=4))
    _nonzero_b(lora_unet, seed=2)
    lora_unet.save_lora_adapter(tmp_path / "lora")  # diffusers' own format, with its LoraConfig as metadata
    want = _out(lora_unet, x)
    assert np.abs(want - _out(unet, x)).max() > 1e-2
    m = export_adapters(unet, {"style": tmp_path / "lora" / "pytorch_lora_weights.safetensors"}, x,
                        targets=["pixel-8"], out_dir=tmp_path / "o", formats=["onnx"], precision="fp32",
                        policy="fuse", cache_dir=tmp_path / "cache", parity_samples=1)
    styled = next(a for a in m.artifacts if a.adapter == "style")
    assert styled.parity.status == "pass"
    assert np.abs(_run(m, styled, x) - want).max() < 1e-4


def test_mismatched_adapters_are_refused_before_any_export(dit, tmp_path):
    from safetensors.torch import load_file, save_file

    base, x, _, root = dit
    out = tmp_path / "never"

    def refused(item, match):
        with pytest.raises(ConfigError, match=match):
            export_adapters(base, {"bad": item}, x, targets=["pixel-8"], out_dir=out, formats=["onnx"])
        assert not out.exists()

    weights = load_file(str(root / "peft" / "adapter_model.safetensors"))
    moved = {k.replace("transformer_blocks.1.", "transformer_blocks.7."): v for k, v in weights.items()}
    save_file(moved, str(tmp_path / "moved.safetensors"))
    refused(tmp_path / "moved.safetensors", r"'bad'.*target module '.*transformer_blocks\.7\.attn1\.to_q'.*"
                                            "does not exist")

    wrong = tmp_path / "wrong_rank"
    wrong.mkdir()
    cfg = json.loads((root / "peft" / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**cfg, "r": 2}))
    save_file(weights, str(wrong / "adapter_model.safetensors"))
    refused(wrong, r"'bad'.*transformer_blocks\.0\.attn1\.to_q\.lora_A\.weight has shape \(4, 16\).*needs \(2, 16\)")

    save_file({"blocks.0.weight": torch.zeros(2, 2)}, str(tmp_path / "plain.safetensors"))
    refused(tmp_path / "plain.safetensors", r"'bad'.*unknown LoRA file layout.*blocks\.0\.weight")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"0")
    refused(tmp_path / "junk", r"'bad'.*unknown adapter layout.*weights\.bin")
    refused(torch.nn.Linear(2, 2), r"'bad'.*carries no peft LoRA layers")


@pytest.mark.slow
@pytest.mark.backend_onnx
def test_cli_export_takes_a_diffusers_lora_file_for_a_wrapped_builtin(tmp_path):
    """``--adapter NAME=PATH``: the file's ``transformer.`` keys land on the builtin's wrapped ``dit.``."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from typer.testing import CliRunner

    from mobilekit.builtins import DIT_TINY_CONFIG
    from mobilekit.cli.main import app

    dit = inject_adapter_in_model(LoraConfig(target_modules=["to_q", "to_v"], r=2, lora_alpha=2),
                                  diffusers.DiTTransformer2DModel(**DIT_TINY_CONFIG))
    _nonzero_b(dit, seed=3)
    diffusers.loaders.SD3LoraLoaderMixin.save_lora_weights(tmp_path / "lora",
                                                           transformer_lora_layers=get_peft_model_state_dict(dit))
    args = ["export", "builtin:dit-tiny", "-t", "pixel-8", "-f", "onnx", "-p", "fp32", "-o", str(tmp_path / "o"),
            "--parity-samples", "1", "--adapter-policy", "fuse", "--json"]
    env = {"MOBILEKIT_CACHE_DIR": str(tmp_path / "cache")}
    bad = CliRunner().invoke(app, [*args, "--adapter", "no-equals-sign"], env=env)
    assert isinstance(bad.exception, ConfigError) and "NAME=PATH" in str(bad.exception)
    ok = CliRunner().invoke(app, [*args, "--adapter", f"style={tmp_path / 'lora' / 'pytorch_lora_weights.safetensors'}"],
                            env=env)
    assert ok.exit_code == 0, ok.output
    from mobilekit.artifact import Manifest

    m = Manifest.read(tmp_path / "o")
    assert sorted(a.adapter or "" for a in m.artifacts) == ["", "style"]
    assert all(a.parity.status == "pass" for a in m.artifacts)
    assert len({a.sha256 for a in m.artifacts}) == 2
