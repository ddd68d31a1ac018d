"""Built-in models for ``make demo``, the tests and quick tries: ``builtin:dit-tiny``, ``builtin:gan-tiny``.

Each comes with example inputs and a few sample batches for int8 calibration. Weights are
random but seeded: latency and export do not depend on their values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mobilekit.errors import ConfigError
from mobilekit.images import ImageOutput

# The E2GAN generator ends in tanh/clamp: its output 0 is an image in [-1, 1].
GAN_IMAGE = ImageOutput(output=0, low=-1.0, high=1.0)


class DiTForExport(torch.nn.Module):
    """A diffusers DiT called with positional tensors, returning the noise prediction tensor.

    Exporters want ``forward(*tensors) -> tensor``; diffusers returns an output dataclass.
    """

    def __init__(self, dit: torch.nn.Module) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.dit(latents, timestep=timestep, class_labels=class_labels).sample


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: the module, its example inputs, calibration batches, a name and, for an
    image-to-image model, which output is the image (for 8-bit image parity)."""

    name: str
    model: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    calibration: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    input_names: tuple[str, ...] = ()
    image: ImageOutput | None = None


DIT_TINY_CONFIG: dict[str, Any] = {
    "num_attention_heads": 4, "attention_head_dim": 32, "in_channels": 4, "out_channels": 4, "num_layers": 6,
    "sample_size": 16, "patch_size": 2, "num_embeds_ada_norm": 10, "norm_type": "ada_norm_zero",
}


def dit_inputs(config: dict[str, Any], batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Latents, an integer timestep and an integer class label for a DiT config."""
    g = torch.Generator().manual_seed(seed)
    size, ch = config["sample_size"], config["in_channels"]
    return (torch.randn(batch, ch, size, size, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randint(0, config["num_embeds_ada_norm"], (batch,), generator=g))


def _dit_tiny(seed: int) -> BuiltinModel:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(**DIT_TINY_CONFIG).eval()
    calibration = [dit_inputs(DIT_TINY_CONFIG, seed=seed + 1 + i) for i in range(8)]
    return BuiltinModel("dit-tiny", DiTForExport(dit).eval(), dit_inputs(DIT_TINY_CONFIG, seed=seed), calibration,
                        ("latents", "timestep", "class_labels"))


def gan_inputs(config: Any, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An image in [-1, 1] and text embeddings [B, T, D] for an E²GAN generator config."""
    g = torch.Generator().manual_seed(seed)
    size = config.image_size
    return (torch.rand(batch, config.in_channels, size, size, generator=g) * 2 - 1,
            torch.randn(batch, config.text_len, config.text_dim, generator=g))


def _gan_tiny(seed: int) -> BuiltinModel:
    from mobilekit.train.e2gan.models import E2GANConfig, E2GANGenerator

    torch.manual_seed(seed)
    config = E2GANConfig.tiny()
    gen = E2GANGenerator(config).eval()
    return BuiltinModel("gan-tiny", gen, gan_inputs(config, seed=seed),
                        [gan_inputs(config, seed=seed + 1 + i) for i in range(8)], ("image", "text_embeds"),
                        GAN_IMAGE)


BUILTINS: dict[str, Callable[[int], BuiltinModel]] = {"dit-tiny": _dit_tiny, "gan-tiny": _gan_tiny}


def build_builtin(name: str, seed: int = 0) -> BuiltinModel:
    """Build a built-in model by name (``dit-tiny`` or ``gan-tiny``), with a fixed seed."""
    key = name.removeprefix("builtin:")
    if key not in BUILTINS:
        raise ConfigError(f"unknown built-in model {name!r}", where="SPEC",
                          fix=f"known: {', '.join('builtin:' + k for k in BUILTINS)}")
    return BUILTINS[key](seed)


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Build a built-in model and return ``(model, example_inputs)``.

    Example:
        >>> model, inputs = build("dit-tiny")  # doctest: +SKIP
    """
    b = build_builtin(name, seed)
    return b.model, b.example_inputs
