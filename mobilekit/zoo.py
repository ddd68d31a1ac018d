"""A model zoo of architectures people deploy, built from ``transformers`` and ``diffusers`` configs.

Every entry builds a random-weight model from a config (nothing is downloaded) together with
example inputs and calibration batches, so the export spine can be tried on models nobody on
this team wrote. Two sizes exist:

* ``tiny`` (the default): a few hundred thousand parameters at most, for the test suite and the
  zoo matrix benchmark (``benchmarks/zoo_bench.py``).
* ``real``: the published configs people ship (DiT-XL/2 at 256 px, PixArt-α at 512 px, the
  SD-1.5 VAE decoder at 512 px, the default E²GAN generator at 256 px), for
  ``benchmarks/real_size_bench.py``. Latency and memory do not depend on the weights' values.

Models are passed to ``mobilekit.export`` as the libraries build them: a Hugging Face model
returns its ``ModelOutput`` and ``mobilekit.export`` flattens it. Only where a model's
``forward`` is not the call people deploy (a VAE's ``decode``, keyword-only conditioning) does a
small wrapper pick the call.

Use ``zoo:NAME`` as a SPEC on the command line (``mobilekit export zoo:resnet -t pixel-8``), or
``build_zoo_model("resnet")`` from Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mobilekit.builtins import BuiltinModel
from mobilekit.errors import ConfigError


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo.

    Attributes:
        name: the zoo name (``zoo:NAME``).
        family: ``cnn``, ``vit``, ``text``, ``unet``, ``vae``, ``dit``, ``mmdit`` or ``gan``.
        library_class: the ``transformers``/``diffusers`` class it is built from.
        build: ``build(size, seed) -> BuiltinModel`` with ``size`` ``tiny`` or ``real``.
        sizes: the sizes it has.
    """

    name: str
    family: str
    library_class: str
    build: Callable[[str, int], BuiltinModel]
    sizes: tuple[str, ...] = ("tiny",)


def _images(batch: int, channels: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g)


def _batches(make: Callable[[int], tuple[torch.Tensor, ...]], seed: int, n: int = 4
             ) -> tuple[tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]]]:
    """Example inputs from ``seed`` and ``n`` calibration batches from other seeds."""
    return make(seed), [make(seed + 101 + i) for i in range(n)]


def _settle_batchnorm(model: torch.nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> torch.nn.Module:
    """Set BatchNorm running statistics from a few batches, as training would have.

    A random-weight CNN with its initial statistics (mean 0, variance 1), and the small scales
    transformers initialises BatchNorm with, shrinks activations at every block: MobileNetV2's and
    EfficientNet's outputs here were ~1e-24 and ~1e-34, which makes every parity metric meaningless.
    Unit scales and statistics measured on inputs give it the activation scales of a trained network.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    for m in norms:
        m.reset_parameters()  # scale 1, shift 0 (transformers draws BatchNorm scales from N(0, 0.02))
        m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(3):  # each pass re-measures with the previous layers' statistics settled
            for batch in batches:
                model(*batch)
    return model.eval()


def _vision(name: str, model_cls: str, config_cls: str, config: dict[str, Any], size: int,
            input_name: str = "pixel_values") -> Callable[[str, int], BuiltinModel]:
    """A ``transformers`` vision model taking ``pixel_values`` [1, 3, size, size]."""

    def build(_size: str, seed: int) -> BuiltinModel:
        import transformers

        torch.manual_seed(seed)
        cfg = getattr(transformers, config_cls)(**config)
        model = getattr(transformers, model_cls)(cfg).eval()
        example, cal = _batches(lambda s: (_images(1, 3, size, s),), seed)
        _settle_batchnorm(model, [(_images(8, 3, size, seed + 1000 + i),) for i in range(2)])
        return BuiltinModel(name, model, example, cal, (input_name,))

    return build


def _clip_text(_size: str, seed: int) -> BuiltinModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = CLIPTextModel(cfg).eval()

    def ids(s: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(s)
        return (torch.randint(0, 512, (1, 16), generator=g),)

    example, cal = _batches(ids, seed)
    return BuiltinModel("clip-text", model, example, cal, ("input_ids",))


class SampleOf(torch.nn.Module):
    """Calls a diffusers model with named inputs from positional tensors and returns ``.sample``.

    Exporters take ``forward(*tensors)``; diffusers models take keyword conditioning
    (``timestep=``, ``encoder_hidden_states=``) and return an output dataclass.
    """

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], method: str = "forward") -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.method = method
        self.mobilekit_input_names = list(names)  # forward takes *args; the artifact keeps these names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = getattr(self.model, self.method)(**dict(zip(self.names, args, strict=True)))
        return out.sample if hasattr(out, "sample") else out[0]


def _diffusers(name: str, model: torch.nn.Module, names: tuple[str, ...],
               make: Callable[[int], tuple[torch.Tensor, ...]], seed: int, method: str = "forward") -> BuiltinModel:
    example, cal = _batches(make, seed)
    return BuiltinModel(name, SampleOf(model.eval(), names, method).eval(), example, cal, names)


def _timestep(g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1000, (1,), generator=g)


def _unet2d(_size: str, seed: int) -> BuiltinModel:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    model = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                        layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"))

    def make(s: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(s)
        return torch.randn(1, 3, 16, 16, generator=g), _timestep(g)

    return _diffusers("unet2d", model, ("sample", "timestep"), make, seed)


def _unet2d_condition(_size: str, seed: int) -> BuiltinModel:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                 layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                                 attention_head_dim=4,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))

    def make(s: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(s)
        return torch.randn(1, 4, 16, 16, generator=g), _timestep(g), torch.randn(1, 8, 32, generator=g)

    return _diffusers("unet2d-condition", model, ("sample", "timestep", "encoder_hidden_states"), make, seed)


def _controlnet(_size: str, seed: int) -> BuiltinModel:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    model = ControlNetModel(in_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                            cross_attention_dim=32, attention_head_dim=4,
                            conditioning_embedding_out_channels=(8, 16),
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"))

    class Residuals(torch.nn.Module):
        """ControlNet's residuals as a flat tuple: what the UNet it steers consumes."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    controlnet_cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
            down, mid = self.net(sample, timestep, encoder_hidden_states, controlnet_cond, return_dict=False)
            return (*down, mid)

    def make(s: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(s)
        return (torch.randn(1, 4, 16, 16, generator=g), _timestep(g), torch.randn(1, 8, 32, generator=g),
                torch.rand(1, 3, 32, 32, generator=g))

    example, cal = _batches(make, seed)
    return BuiltinModel("controlnet", Residuals(model.eval()).eval(), example, cal,
                        ("sample", "timestep", "encoder_hidden_states", "controlnet_cond"))


SD15_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}


def _vae_decoder(size: str, seed: int) -> BuiltinModel:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    if size == "real":  # Stable Diffusion 1.5's VAE, decoding 64x64 latents to 512x512
        config, latent = SD15_VAE, 64
    else:
        config = {**SD15_VAE, "layers_per_block": 1, "norm_num_groups": 8, "block_out_channels": (16, 32),
                  "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2}
        latent = 16
    vae = AutoencoderKL(**config)
    vae.encoder = None  # only the decoder ships in an image pipeline; keep its weights alone

    def make(s: int) -> tuple[torch.Tensor, ...]:
        return (_images(1, 4, latent, s),)

    return _diffusers("vae-decoder" if size == "tiny" else "sd15-vae-decoder", vae, ("z",), make, seed,
                      method="decode")


DIT_XL_2: dict[str, Any] = {  # DiT-XL/2 at 256 px (Peebles & Xie 2023): 28 blocks, width 1152, 16 heads
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "num_layers": 28,
    "sample_size": 32, "patch_size": 2, "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_zero",
}


def _dit(size: str, seed: int) -> BuiltinModel:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    config = DIT_XL_2 if size == "real" else {**DIT_XL_2, "num_attention_heads": 2, "attention_head_dim": 16,
                                              "num_layers": 2, "sample_size": 8}
    model = DiTTransformer2DModel(**config)
    n = config["sample_size"]

    def make(s: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(s)
        return (torch.randn(1, 4, n, n, generator=g), _timestep(g),
                torch.randint(0, config["num_embeds_ada_norm"], (1,), generator=g))

    return _diffusers("dit" if size == "tiny" else "dit-xl-2", model, ("hidden_states", "timestep", "class_labels"),
                      make, seed)


PIXART_ALPHA_512: dict[str, Any] = {  # PixArt-α 512 px: 28 blocks, width 1152, T5-XXL (4096) captions
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "num_layers": 28,
    "cross_attention_dim": 1152, "caption_channels": 4096, "sample_size": 64, "patch_size": 2,
    "norm_type": "ada_norm_single", "use_additional_conditions": False,
}


def _pixart(size: str, seed: int) -> BuiltinModel:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    if size == "real":
        config, tokens = PIXART_ALPHA_512, 120
    else:
        config = {**PIXART_ALPHA_512, "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2,
                  "cross_attention_dim": 32, "caption_channels": 32, "sample_size": 8}
        tokens = 8
    model = PixArtTransformer2DModel(**config)
    n = config["sample_size"]

    def make(s: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(s)
        return (torch.randn(1, 4, n, n, generator=g), torch.randn(1, tokens, config["caption_channels"], generator=g),
                _timestep(g))

    return _diffusers("pixart" if size == "tiny" else "pixart-alpha-512", model,
                      ("hidden_states", "encoder_hidden_states", "timestep"), make, seed)


def _sd3(_size: str, seed: int) -> BuiltinModel:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  caption_projection_dim=32, pooled_projection_dim=16, pos_embed_max_size=16)

    def make(s: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(s)
        return (torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 8, 32, generator=g),
                torch.randn(1, 16, generator=g), torch.rand(1, generator=g) * 1000)

    return _diffusers("sd3", model, ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"),
                      make, seed)


def _flux(_size: str, seed: int) -> BuiltinModel:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
    img, txt = 16, 8

    def make(s: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(s)
        img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"),
                              -1).reshape(img, 3)
        return (torch.randn(1, img, 16, generator=g), torch.randn(1, txt, 32, generator=g),
                torch.randn(1, 16, generator=g), torch.rand(1, generator=g), img_ids, torch.zeros(txt, 3))

    return _diffusers("flux", model, ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep",
                                      "img_ids", "txt_ids"), make, seed)


def _e2gan(size: str, seed: int) -> BuiltinModel:
    from mobilekit.builtins import GAN_IMAGE, gan_inputs
    from mobilekit.train.e2gan.models import E2GANConfig, E2GANGenerator

    torch.manual_seed(seed)
    config = E2GANConfig() if size == "real" else E2GANConfig.tiny()
    gen = E2GANGenerator(config).eval()
    example, cal = _batches(lambda s: gan_inputs(config, seed=s), seed)
    return BuiltinModel("e2gan" if size == "tiny" else "e2gan-256", gen, example, cal, ("image", "text_embeds"),
                        GAN_IMAGE)


def _entries() -> dict[str, ZooEntry]:
    small_cnn = {"num_channels": 3, "image_size": 64}
    vision = [
        ("resnet", "cnn", "ResNetModel", "ResNetConfig",
         {"embedding_size": 16, "hidden_sizes": [16, 32, 64, 64], "depths": [1, 1, 1, 1], "layer_type": "basic"}, 64),
        ("mobilenet-v2", "cnn", "MobileNetV2Model", "MobileNetV2Config",
         {**small_cnn, "depth_multiplier": 0.35}, 64),
        ("efficientnet", "cnn", "EfficientNetModel", "EfficientNetConfig",
         {**small_cnn, "width_coefficient": 0.25, "depth_coefficient": 0.2, "hidden_dim": 320}, 64),
        ("convnext", "cnn", "ConvNextModel", "ConvNextConfig",
         {"hidden_sizes": [16, 32, 64, 64], "depths": [1, 1, 1, 1]}, 64),
        ("vit", "vit", "ViTModel", "ViTConfig",
         {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
          "image_size": 32, "patch_size": 8}, 32),
        ("swin", "vit", "SwinModel", "SwinConfig",
         {"image_size": 64, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 4],
          "window_size": 4}, 64),
        ("mobilevit", "vit", "MobileViTModel", "MobileViTConfig",
         {"image_size": 64, "hidden_sizes": [32, 48, 64], "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64],
          "num_attention_heads": 2}, 64),
        ("segformer", "vit", "SegformerForSemanticSegmentation", "SegformerConfig",
         {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1], "hidden_sizes": [16, 32],
          "patch_sizes": [7, 3], "strides": [4, 2], "num_attention_heads": [1, 2], "mlp_ratios": [2, 2],
          "decoder_hidden_size": 32, "num_labels": 4}, 64),
    ]
    out = {n: ZooEntry(n, fam, f"transformers.{cls}", _vision(n, cls, cfg_cls, cfg, size))
           for n, fam, cls, cfg_cls, cfg, size in vision}
    out["clip-text"] = ZooEntry("clip-text", "text", "transformers.CLIPTextModel", _clip_text)
    for entry in [
        ZooEntry("unet2d", "unet", "diffusers.UNet2DModel", _unet2d),
        ZooEntry("unet2d-condition", "unet", "diffusers.UNet2DConditionModel", _unet2d_condition),
        ZooEntry("controlnet", "unet", "diffusers.ControlNetModel", _controlnet),
        ZooEntry("vae-decoder", "vae", "diffusers.AutoencoderKL", _vae_decoder, ("tiny", "real")),
        ZooEntry("dit", "dit", "diffusers.DiTTransformer2DModel", _dit, ("tiny", "real")),
        ZooEntry("pixart", "dit", "diffusers.PixArtTransformer2DModel", _pixart, ("tiny", "real")),
        ZooEntry("sd3", "mmdit", "diffusers.SD3Transformer2DModel", _sd3),
        ZooEntry("flux", "mmdit", "diffusers.FluxTransformer2DModel", _flux),
        ZooEntry("e2gan", "gan", "mobilekit.E2GANGenerator", _e2gan, ("tiny", "real")),
    ]:
        out[entry.name] = entry
    return out


ZOO: dict[str, ZooEntry] = _entries()


def build_zoo_model(name: str, *, size: str = "tiny", seed: int = 0) -> BuiltinModel:
    """Build zoo model ``name`` (``zoo:`` prefix optional) at ``size`` (``tiny`` or ``real``).

    Raises:
        ConfigError: an unknown name, or a size the entry does not have.

    Example:
        >>> build_zoo_model("resnet").example_inputs[0].shape  # doctest: +SKIP
        torch.Size([1, 3, 64, 64])
    """
    key = name.removeprefix("zoo:")
    if key not in ZOO:
        import difflib

        near = difflib.get_close_matches(key, ZOO, n=1)
        raise ConfigError(f"unknown zoo model {name!r}", where="SPEC",
                          fix=(f"did you mean zoo:{near[0]}? " if near else "") + f"known: {', '.join(ZOO)}")
    entry = ZOO[key]
    if size not in entry.sizes:
        raise ConfigError(f"zoo model {key} has no size {size!r}", where="size",
                          fix=f"sizes of {key}: {', '.join(entry.sizes)}")
    return entry.build(size, seed)
