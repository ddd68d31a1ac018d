"""Crucial-layer LoRA: placement and ranks, adapter files, fused vs unfused parity, base untouched."""

from __future__ import annotations

import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train.e2gan.lora import (LoRAConfig, apply_adapter, attach_lora, fuse_adapter, load_adapter,
                                        lora_targets, make_adapter, save_adapter)
from mobilekit.train.e2gan.models import E2GANConfig, build_generator, sha256_of_state


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def base():
    return build_generator(E2GANConfig.tiny(), seed=0).eval()


def _lora_ranks(model):
    from peft.tuners.lora import LoraLayer

    return {n: int(m.r["default"]) for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _trained_adapter(base, ranks):
    model = attach_lora(base, LoRAConfig(ranks=ranks))
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model, make_adapter(model, LoRAConfig(ranks=ranks), concept="sepia", prompt="make it sepia",
                               base_sha256=sha256_of_state(base.state_dict()), concept_embedding=torch.randn(4, 16))


def test_lora_only_on_configured_layers_with_given_ranks(base):
    names = lora_targets(base)
    ranks = {names[0]: 1, names[4]: 3, names[-1]: 2}
    model = attach_lora(base, LoRAConfig(ranks=ranks))
    assert _lora_ranks(model) == ranks
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    x = base.example_inputs()
    assert torch.allclose(model(*x), base(*x), atol=1e-6)  # B = 0 at start


def test_bad_target_pattern_names_the_pattern(base):
    with pytest.raises(ConfigError) as exc:
        lora_targets(base, [r"^res1\.norm"])
    assert "res1" in str(exc.value) and "Conv2d or Linear" in str(exc.value)
    with pytest.raises(ConfigError, match="no module"):
        attach_lora(base, LoRAConfig(ranks={"nope.conv": 2}))
    with pytest.raises(ConfigError, match="rank"):
        LoRAConfig(ranks={"stem.0.0": 0})


def test_fused_and_unfused_agree_and_base_is_untouched(base, tmp_path):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    names = lora_targets(base)
    _, adapter = _trained_adapter(base, {n: 2 for n in names})
    save_adapter(adapter, tmp_path / "ad")
    loaded = load_adapter(tmp_path / "ad")
    assert loaded.config.ranks == adapter.config.ranks and loaded.concept == "sepia"
    unfused = apply_adapter(base, loaded)
    fused = fuse_adapter(base, loaded)
    x = base.example_inputs(batch=2)
    with torch.no_grad():
        a, b, c = unfused(*x), fused(*x), base(*x)
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - c).abs().max() > 1e-3  # the adapter does change the output
    assert not any("lora" in n for n, _ in fused.named_modules())
    assert {type(m) for m in fused.modules()} == {type(m) for m in base.modules()}
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_adapter_is_small_and_refuses_another_base(base, tmp_path):
    _, adapter = _trained_adapter(base, {n: 1 for n in lora_targets(base)[:4]})
    save_adapter(adapter, tmp_path / "ad")
    size = (tmp_path / "ad" / "adapter.safetensors").stat().st_size
    assert size < 0.25 * 4 * base.num_parameters()
    other = build_generator(E2GANConfig.tiny(), seed=1)
    with pytest.raises(ConfigError, match="another base"):
        fuse_adapter(other, load_adapter(tmp_path / "ad"))
    with pytest.raises(ConfigError, match="missing adapter"):
        load_adapter(tmp_path / "empty")
