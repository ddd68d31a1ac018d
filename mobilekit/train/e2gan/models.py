"""E²GAN generator and PatchGAN discriminator (arXiv 2401.06127), built from export-friendly ops.

Generator layout, as published: a down-sampling stem, two ResNet blocks, an extra 2×
down-sampling (``ds``), one transformer block (self-attention, then cross-attention on the
concept's text embedding, then an MLP), a 2× up-sampling (``us``), one ResNet block and an
up-sampling head. Widths, heads and the text width are configurable; the paper gives none of
them, so the defaults are our own, sized for real time at 256×256 (≈10 GMACs, ≈2.6M params;
by our count the pix2pix 9-ResNet-block generator, 21 ms on an iPhone 14 Pro, is ≈56 GMACs, 11M params).

Only ops every mobile converter lowers are used: Conv2d, Linear, GroupNorm, LayerNorm,
SiLU, GELU, matmul + softmax attention (no ``scaled_dot_product_attention``), nearest 2×
up-sampling, tanh and clamp.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mobilekit._io import atomic_path, write_json_atomic
from mobilekit.errors import ConfigError

logger = logging.getLogger(__name__)

_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"


def _check_pos(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}", where=f"E2GANConfig.{name}")


@dataclass(frozen=True, kw_only=True)
class E2GANConfig:
    """Shape of an E²GAN generator.

    Attributes:
        widths: channels at full resolution (stem conv), 1/2, 1/4 (ResNet blocks) and 1/8
            (transformer block) of the input size.
        num_heads: attention heads of the transformer block; must divide ``widths[3]``.
        text_dim: width D of the text embeddings [B, T, D] fed to cross-attention.
        mlp_ratio: hidden width of the transformer MLP as a multiple of ``widths[3]``.
        norm_groups: GroupNorm groups; must divide every width.
        image_size: the square input size in pixels the model is meant for (example inputs,
            benchmarks); any size divisible by 8 runs.
        text_len: T, tokens per text embedding in example inputs (learned concept
            embeddings use this many tokens).
        in_channels: channels of the input image.
        out_channels: channels of the output image.
        residual: predict a correction added to the input image (``clamp(image + head, -1,
            1)``) instead of the image itself (``tanh(head)``). Our choice, not the paper's:
            identity is free, so short CPU trainings start from the source photo; needs
            ``in_channels == out_channels``.
        version: config schema version.
    """

    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    num_heads: int = 4
    text_dim: int = 512
    mlp_ratio: int = 2
    norm_groups: int = 8
    image_size: int = 256
    text_len: int = 8
    in_channels: int = 3
    out_channels: int = 3
    residual: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        widths = tuple(self.widths)
        if len(widths) != 4:
            raise ConfigError(f"widths needs 4 entries (1, 1/2, 1/4, 1/8 resolution), got {len(widths)}",
                              where="E2GANConfig.widths")
        object.__setattr__(self, "widths", widths)
        for i, w in enumerate(widths):
            _check_pos(f"widths[{i}]", w)
        for name in ("num_heads", "text_dim", "mlp_ratio", "norm_groups", "image_size", "text_len",
                     "in_channels", "out_channels"):
            _check_pos(name, getattr(self, name))
        if widths[3] % self.num_heads:
            raise ConfigError(f"num_heads={self.num_heads} must divide widths[3]={widths[3]}",
                              where="E2GANConfig.num_heads")
        for i, w in enumerate(widths):
            if w % self.norm_groups:
                raise ConfigError(f"norm_groups={self.norm_groups} must divide widths[{i}]={w}",
                                  where="E2GANConfig.norm_groups")
        if self.image_size % 8:
            raise ConfigError(f"image_size must be divisible by 8, got {self.image_size}",
                              where="E2GANConfig.image_size", fix="use e.g. 64, 128 or 256")
        if self.residual and self.in_channels != self.out_channels:
            raise ConfigError(f"residual needs in_channels == out_channels ({self.in_channels} != {self.out_channels})",
                              where="E2GANConfig.residual", fix="set residual=False")
        if self.version != 1:
            raise ConfigError(f"unknown config version {self.version}", where="E2GANConfig.version",
                              fix="this mobilekit reads version 1")

    @classmethod
    def tiny(cls) -> E2GANConfig:
        """A very small config (64×64, widths 8–16) for tests and ``builtin:gan-tiny``."""
        return cls(widths=(8, 8, 16, 16), num_heads=2, text_dim=16, mlp_ratio=2, norm_groups=4,
                   image_size=64, text_len=4)

    @classmethod
    def small(cls) -> E2GANConfig:
        """A small config for CPU benchmarks (64×64, widths 16–64, 64-d text; ≈0.18M params)."""
        return cls(widths=(16, 32, 32, 64), num_heads=4, text_dim=64, mlp_ratio=2, norm_groups=8,
                   image_size=64, text_len=4)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> E2GANConfig:
        """Build a config from ``to_dict()`` output; unknown keys raise ConfigError."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown E2GANConfig keys {unknown}", where="config.json",
                              fix=f"known keys: {sorted(known)}")
        d = dict(data)
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return cls(**d)


class ResnetBlock(nn.Module):
    """conv3×3 → GroupNorm → SiLU → conv3×3 → GroupNorm, plus the input."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        return x + self.norm2(self.conv2(h))


class Attention(nn.Module):
    """Multi-head attention written as matmul + softmax (lowers on every mobile backend)."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self._split(self.to_q(x)) * self.scale
        k = self._split(self.to_k(context))
        v = self._split(self.to_v(context))
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
        out = torch.matmul(attn, v).permute(0, 2, 1, 3).reshape(b, n, c)
        return self.to_out(out)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the text embedding, and a GELU MLP."""

    def __init__(self, dim: int, text_dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, text_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, dim * mlp_ratio)
        self.ff_act = nn.GELU()
        self.ff_out = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.reshape(b, c, h * w).permute(0, 2, 1)
        n1 = self.norm1(t)
        t = t + self.attn1(n1, n1)
        t = t + self.attn2(self.norm2(t), text_embeds)
        t = t + self.ff_out(self.ff_act(self.ff_in(self.norm3(t))))
        return t.permute(0, 2, 1).reshape(b, c, h, w)


def _conv_norm_act(cin: int, cout: int, groups: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2),
                         nn.GroupNorm(groups, cout), nn.SiLU())


class _Up(nn.Module):
    """Nearest 2× up-sampling followed by conv → GroupNorm → SiLU."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(groups, cout)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.act(self.norm(self.conv(x)))


# Named LoRA placements (``AdaptConfig.lora_layers``, ``gan adapt --lora-layers``): the paper's crucial
# layers, the ResNet blocks' convolutions (the layers full fine-tuning moved most, e2gan.md), or both.
# Named so that a placement ablation and a user pick the same module sets without writing regexes.
_CRUCIAL = (r"^stem\.", r"^ds\.", r"^transformer\.", r"^us\.", r"^head\.")
_RESNET_CONVS = (r"^res\d+\.conv[12]$",)
LORA_PLACEMENTS: dict[str, tuple[str, ...]] = {"crucial": _CRUCIAL, "resnet": _RESNET_CONVS,
                                               "both": _CRUCIAL + _RESNET_CONVS}


class E2GANGenerator(nn.Module):
    """Text-conditioned image-to-image generator of E²GAN.

    Args:
        config: the generator's shape.

    Example:
        >>> g = E2GANGenerator(E2GANConfig.tiny())
        >>> img, txt = g.example_inputs()
        >>> g(img, txt).shape
        torch.Size([1, 3, 64, 64])
    """

    # Module-path regexes of the crucial layers that receive LoRA by default: the
    # sampling layers (stem, ds, us, head) and the transformer block; ResNet blocks get none.
    _crucial_layers: ClassVar[tuple[str, ...]] = LORA_PLACEMENTS["crucial"]

    def __init__(self, config: E2GANConfig) -> None:
        super().__init__()
        if not isinstance(config, E2GANConfig):
            raise ConfigError(f"config must be an E2GANConfig, got {type(config).__name__}",
                              where="E2GANGenerator(config)")
        self.config = config
        w0, w1, w2, w3 = config.widths
        g = config.norm_groups
        self.stem = nn.Sequential(
            _conv_norm_act(config.in_channels, w0, g, kernel=7),
            _conv_norm_act(w0, w1, g, stride=2),
            _conv_norm_act(w1, w2, g, stride=2),
        )
        self.res1 = ResnetBlock(w2, g)
        self.res2 = ResnetBlock(w2, g)
        self.ds = _conv_norm_act(w2, w3, g, stride=2)
        self.transformer = TransformerBlock(w3, config.text_dim, config.num_heads, config.mlp_ratio)
        self.us = _Up(w3, w2, g)
        self.res3 = ResnetBlock(w2, g)
        self.head = nn.ModuleDict({"up1": _Up(w2, w1, g), "up2": _Up(w1, w0, g),
                                   "conv_out": nn.Conv2d(w0, config.out_channels, 7, padding=3)})
        if config.residual:  # start near the identity map: a small (not zero) correction
            with torch.no_grad():
                self.head["conv_out"].weight.mul_(0.1)
                self.head["conv_out"].bias.zero_()

    def forward(self, image: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Translate ``image`` under the concept ``text_embeds``.

        Args:
            image: [B, 3, H, W] float in [-1, 1]; H and W divisible by 8.
            text_embeds: [B, T, D] float, D = ``config.text_dim``.

        Returns:
            [B, 3, H, W] float in [-1, 1]: ``clamp(image + correction)`` when
            ``config.residual``, else ``tanh(output)``.
        """
        x = self.stem(image)
        x = self.res2(self.res1(x))
        x = self.transformer(self.ds(x), text_embeds)
        x = self.res3(self.us(x))
        x = self.head["conv_out"](self.head["up2"](self.head["up1"](x)))
        if self.config.residual:
            return torch.clamp(image + x, -1.0, 1.0)
        return torch.tanh(x)

    def example_inputs(self, batch: int = 1, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic example inputs (image in [-1, 1], text embeddings) for export."""
        size = size or self.config.image_size
        gen = torch.Generator().manual_seed(0)
        img = torch.rand(batch, self.config.in_channels, size, size, generator=gen) * 2 - 1
        txt = torch.randn(batch, self.config.text_len, self.config.text_dim, generator=gen)
        return img, txt

    def num_parameters(self) -> int:
        """Number of parameters (elements)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: Path) -> Path:
        """Save weights (``model.safetensors``) and ``config.json`` into ``directory`` atomically."""
        return save_model(self, self.config.to_dict(), directory, kind="E2GANGenerator")

    @classmethod
    def from_pretrained(cls, directory: Path) -> E2GANGenerator:
        """Load a generator written by ``save_pretrained``."""
        cfg, state = load_model_files(directory, kind="E2GANGenerator")
        model = cls(E2GANConfig.from_dict(cfg))
        _load_state(model, state, directory)
        return model


@dataclass(frozen=True, kw_only=True)
class PatchDiscriminatorConfig:
    """Shape of the conditional PatchGAN discriminator (pix2pix style; sees source and image).

    Attributes:
        base_width: channels of the first layer; doubled at each down-sampling layer.
        num_layers: stride-2 layers; each output logit sees a patch of 16·2^(n-2)+… pixels.
        in_channels: channels of source + image (6 for two RGB images).
        version: config schema version.
    """

    base_width: int = 32
    num_layers: int = 3
    in_channels: int = 6
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("base_width", "num_layers", "in_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}",
                                  where=f"PatchDiscriminatorConfig.{name}")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchDiscriminatorConfig:
        """Build a config from ``to_dict()`` output."""
        return cls(**data)


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: one real/fake logit per image patch.

    Args:
        config: the discriminator's shape.
    """

    def __init__(self, config: PatchDiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config or PatchDiscriminatorConfig()
        c = self.config.base_width
        layers: list[nn.Module] = [nn.Conv2d(self.config.in_channels, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        for _ in range(self.config.num_layers - 1):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(min(8, c * 2), c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(min(8, c), c), nn.LeakyReLU(0.2),
                   nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Return patch logits [B, 1, h, w] for ``image`` given ``source`` (both [B, 3, H, W])."""
        return self.net(torch.cat([source, image], dim=1))


# ---------------------------------------------------------------------------- files


def sha256_of_state(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and bytes of a state dict."""
    from mobilekit.cache import hash_tensors

    return hash_tensors(sorted(state.items())).hexdigest()


def save_model(model: nn.Module, config: dict[str, Any], directory: Path, *, kind: str,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors + config.json into ``directory`` (atomic per file)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / _WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "kind": kind})
    payload = {"kind": kind, "config": config, "sha256": sha256_of_state(state), **(extra or {})}
    write_json_atomic(directory / _CONFIG, payload)
    logger.info("saved %s to %s", kind, directory)
    return directory


def load_model_files(directory: Path, *, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read config dict and state dict written by ``save_model``; raise ConfigError on bad files."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / _CONFIG, directory / _WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ConfigError(f"missing {p.name}", where=str(directory),
                              fix="pass a directory written by save_pretrained()")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config.json is not valid JSON: {exc}", where=str(cfg_path)) from exc
    if meta.get("kind") != kind:
        raise ConfigError(f"expected a saved {kind}, found {meta.get('kind')!r}", where=str(cfg_path))
    return meta["config"], load_file(str(w_path))


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}",
                          where=str(where))


def build_generator(config: E2GANConfig | None = None, *, seed: int = 0) -> E2GANGenerator:
    """Build a freshly initialised generator with a fixed seed (default config if None)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return E2GANGenerator(config or E2GANConfig())


__all__ = ["E2GANConfig", "E2GANGenerator", "PatchDiscriminator", "PatchDiscriminatorConfig",
           "build_generator", "sha256_of_state"]
