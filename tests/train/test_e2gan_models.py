"""E²GAN generator/discriminator: shapes, config validation, save/load, export through real runtimes."""

from __future__ import annotations

import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train.e2gan.models import (E2GANConfig, E2GANGenerator, PatchDiscriminator,
                                          PatchDiscriminatorConfig, build_generator)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_generator_shapes_and_range():
    g = build_generator(E2GANConfig.tiny()).eval()
    img = torch.rand(2, 3, 64, 48) * 2 - 1
    txt = torch.randn(2, 4, 16)
    out = g(img, txt)
    assert out.shape == (2, 3, 64, 48)
    assert out.min() >= -1 and out.max() <= 1
    # the text embedding changes the output (cross-attention is wired in)
    assert (g(img, txt + 1) - out).abs().max() > 1e-6


def test_default_config_is_sized_for_256():
    cfg = E2GANConfig()
    g = E2GANGenerator(cfg)
    assert cfg.image_size == 256
    assert 1e6 < g.num_parameters() < 10e6
    assert E2GANConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kwargs,field", [
    ({"widths": (8, 8, 16)}, "widths"),
    ({"widths": (8, 8, 16, 15)}, "num_heads"),
    ({"num_heads": 3, "widths": (8, 8, 16, 16)}, "num_heads"),
    ({"image_size": 60}, "image_size"),
    ({"text_dim": 0}, "text_dim"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as exc:
        E2GANConfig(**{**E2GANConfig.tiny().to_dict(), **kwargs})
    assert field in str(exc.value)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown E2GANConfig keys"):
        E2GANConfig.from_dict({**E2GANConfig.tiny().to_dict(), "depth": 3})


def test_save_and_load_roundtrip(tmp_path):
    g = build_generator(E2GANConfig.tiny(), seed=3).eval()
    g.save_pretrained(tmp_path / "gen")
    assert (tmp_path / "gen" / "model.safetensors").is_file()
    h = E2GANGenerator.from_pretrained(tmp_path / "gen").eval()
    x = g.example_inputs()
    assert torch.equal(g(*x), h(*x))
    with pytest.raises(ConfigError, match="missing config.json"):
        E2GANGenerator.from_pretrained(tmp_path / "nothing")


def test_crucial_layers_skip_resnet_blocks():
    from mobilekit.train.e2gan.lora import lora_targets

    names = lora_targets(build_generator(E2GANConfig.tiny()))
    assert names and not any(n.startswith("res") for n in names)
    for prefix in ("stem.", "ds.", "transformer.", "us.", "head."):
        assert any(n.startswith(prefix) for n in names)


def test_patch_discriminator_outputs_patches():
    d = PatchDiscriminator(PatchDiscriminatorConfig(base_width=8, num_layers=2))
    out = d(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 1, 8, 8)
