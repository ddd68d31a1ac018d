"""Architectures of the calibration set, built with random weights on the ``meta`` device.

Only used to (re)compute ``calibration_features.json``; the estimator reads that file and
never rebuilds these at run time. Each builder returns ``(model, example_inputs)``. Models
come from ``transformers``/``diffusers`` config classes where those exist, otherwise from
the few-line definitions below; these follow the published stage widths and depths, so
FLOPs land near the published numbers (checked in ``calibrate.build_features``), but they are
structural stand-ins, not the exact networks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]


def _img(size: int, ch: int = 3) -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, ch, size, size),)


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1, act: type[nn.Module] | None = nn.ReLU,
         d: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, (k // 2) * d, dilation=d, groups=g, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _SE(nn.Module):
    def __init__(self, ch: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(ch, max(8, ch // r), 1), nn.Conv2d(max(8, ch // r), ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class _MBConv(nn.Module):
    """Inverted residual (MobileNetV2/EfficientNet); ``fused`` replaces expand+dw by one k×k conv."""

    def __init__(self, cin: int, cout: int, expand: float, k: int, s: int, se: bool, act: type[nn.Module],
                 fused: bool = False) -> None:
        super().__init__()
        mid = int(round(cin * expand))
        layers: list[nn.Module] = []
        if fused:
            layers.append(_cbr(cin, mid, k, s, act=act))
        else:
            if expand != 1:
                layers.append(_cbr(cin, mid, 1, act=act))
            layers.append(_cbr(mid, mid, k, s, g=mid, act=act))
        if se:
            layers.append(_SE(mid))
        layers.append(_cbr(mid, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.res = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.res else y


def mbconv_net(stem: int, stages: list[tuple[float, int, int, int, int, bool]], head: int,
               act: type[nn.Module] = nn.ReLU6, fused_stages: int = 0, classes: int = 1000) -> nn.Module:
    """Stem conv, stages of (expand, kernel, stride, out_channels, repeats, se), 1×1 head, classifier."""
    layers: list[nn.Module] = [_cbr(3, stem, 3, 2, act=act)]
    cin = stem
    for i, (e, k, s, c, n, se) in enumerate(stages):
        for j in range(n):
            layers.append(_MBConv(cin, c, e, k, s if j == 0 else 1, se, act, fused=i < fused_stages))
            cin = c
    layers += [_cbr(cin, head, 1, act=act), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, classes)]
    return nn.Sequential(*layers)


def _rnd(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def efficientnet_lite(width: float, depth: float) -> nn.Module:
    base = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
            (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    import math
    stages = []
    for i, (e, k, s, c, n) in enumerate(base):
        reps = n if i in (0, len(base) - 1) else int(math.ceil(n * depth))  # lite keeps first/last fixed
        stages.append((float(e), k, s, _rnd(c * width), reps, False))
    return mbconv_net(32, stages, 1280)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, s: int, d: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(cin, mid, 1), _cbr(mid, mid, 3, s, d=d), _cbr(mid, mid * 4, 1, act=None))
        self.short = _cbr(cin, mid * 4, 1, s, act=None) if (s != 1 or cin != mid * 4) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def resnet(depths: list[int], dilate_last: int = 0) -> nn.Sequential:
    """A bottleneck ResNet trunk (no classifier); the last ``dilate_last`` stages use dilation instead of stride."""
    layers: list[nn.Module] = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin, dil = 64, 1
    for i, n in enumerate(depths):
        mid = 64 * 2 ** i
        s = 1 if i == 0 else 2
        if i >= len(depths) - dilate_last:
            dil, s = dil * 2, 1
        for j in range(n):
            layers.append(_Bottleneck(cin, mid, s if j == 0 else 1, dil))
            cin = mid * 4
    return nn.Sequential(*layers)


class _DeepLabV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = resnet([3, 4, 23, 3], dilate_last=2)
        self.aspp = nn.ModuleList([_cbr(2048, 256, 1)] + [_cbr(2048, 256, 3, d=r) for r in (12, 24, 36)])
        self.proj = _cbr(256 * 5, 256, 1)
        self.pool_proj = _cbr(2048, 256, 1)
        self.head = nn.Sequential(_cbr(256, 256, 3), nn.Conv2d(256, 21, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        pooled = self.pool_proj(f.mean((2, 3), keepdim=True)).expand(-1, -1, f.shape[2], f.shape[3])
        y = self.proj(torch.cat([m(f) for m in self.aspp] + [pooled], 1))
        return nn.functional.interpolate(self.head(y), size=x.shape[2:], mode="bilinear")


class _Metaformer(nn.Module):
    """Mobile hybrid stand-in (FastViT, RepViT, EfficientFormerV2, SwiftFormer, MobileOne): conv stem,
    stages of depthwise-conv mixers with 1×1 FFNs, optional self-attention blocks at the end."""

    def __init__(self, widths: list[int], depths: list[int], ratio: float, k: int = 3, attn_last: int = 0,
                 attn_stages: int = 1, head: int = 0, dw_down: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, widths[0], 3, 2, act=nn.GELU), _cbr(widths[0], widths[0], 3, 2, act=nn.GELU))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, depths)):
            if i > 0 and dw_down:  # depthwise 3x3 stride 2 + pointwise (MobileOne, FastViT)
                blocks.append(nn.Sequential(_cbr(cin, cin, 3, 2, g=cin, act=None), _cbr(cin, w, 1, act=None)))
            elif i > 0:
                blocks.append(_cbr(cin, w, 3, 2, act=None))
            for j in range(n):
                use_attn = i >= len(widths) - attn_stages and j >= n - attn_last
                blocks.append(_AttnBlock(w, ratio) if use_attn else _MBConv(w, w, ratio, k, 1, False, nn.GELU))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        last = head or cin
        self.head = nn.Sequential(_cbr(cin, last, 1, act=nn.GELU) if head else nn.Identity(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class _AttnBlock(nn.Module):
    def __init__(self, ch: int, ratio: float) -> None:
        super().__init__()
        self.heads = max(1, ch // 32)
        while ch % self.heads:
            self.heads -= 1
        self.norm1, self.norm2 = nn.LayerNorm(ch), nn.LayerNorm(ch)
        self.qkv, self.proj = nn.Linear(ch, 3 * ch), nn.Linear(ch, ch)
        self.mlp = nn.Sequential(nn.Linear(ch, int(ch * ratio)), nn.GELU(), nn.Linear(int(ch * ratio), ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm1(t)).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        t = t + self.proj(a)
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class _Fire(nn.Module):
    def __init__(self, cin: int, sq: int, ex: int) -> None:
        super().__init__()
        self.sq, self.e1, self.e3 = nn.Conv2d(cin, sq, 1), nn.Conv2d(sq, ex, 1), nn.Conv2d(sq, ex, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.sq(x))
        return torch.relu(torch.cat([self.e1(s), self.e3(s)], 1))


def squeezenet() -> nn.Module:
    """SqueezeNet 1.0 (the TFLite hosted model)."""
    mp = nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(nn.Conv2d(3, 96, 7, 2), nn.ReLU(), mp, _Fire(96, 16, 64), _Fire(128, 16, 64),
                         _Fire(128, 32, 128), nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(256, 32, 128),
                         _Fire(256, 48, 192), _Fire(384, 48, 192), _Fire(384, 64, 256),
                         nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(512, 64, 256), nn.Conv2d(512, 1000, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class _Branches(nn.Module):
    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


def inception_v4() -> nn.Module:
    """Inception-v4 at 299×299, branch widths from the paper (factorised 1×7/7×1 convs as 7×7 ÷ 7 cost)."""
    def c(i: int, o: int, k: Any = 3, s: int = 1, p: Any = None) -> nn.Module:
        pad = p if p is not None else (k // 2 if isinstance(k, int) else (k[0] // 2, k[1] // 2))
        return nn.Sequential(nn.Conv2d(i, o, k, s, pad, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    def a() -> nn.Module:
        return _Branches(c(384, 96, 1), nn.Sequential(c(384, 64, 1), c(64, 96)),
                         nn.Sequential(c(384, 64, 1), c(64, 96), c(96, 96)),
                         nn.Sequential(nn.AvgPool2d(3, 1, 1), c(384, 96, 1)))

    def b() -> nn.Module:
        return _Branches(c(1024, 384, 1), nn.Sequential(c(1024, 192, 1), c(192, 224, (1, 7)), c(224, 256, (7, 1))),
                         nn.Sequential(c(1024, 192, 1), c(192, 192, (7, 1)), c(192, 224, (1, 7)),
                                       c(224, 224, (7, 1)), c(224, 256, (1, 7))),
                         nn.Sequential(nn.AvgPool2d(3, 1, 1), c(1024, 128, 1)))

    def cc() -> nn.Module:
        return _Branches(c(1536, 256, 1), nn.Sequential(c(1536, 384, 1), c(384, 512, (1, 3))),
                         nn.Sequential(c(1536, 384, 1), c(384, 448, (3, 1)), c(448, 512, (1, 3)), c(512, 512, (3, 1))),
                         nn.Sequential(nn.AvgPool2d(3, 1, 1), c(1536, 256, 1)))

    stem = nn.Sequential(c(3, 32, 3, 2, 0), c(32, 32, 3, 1, 0), c(32, 64), _Branches(nn.MaxPool2d(3, 2), c(64, 96, 3, 2, 0)),
                         _Branches(nn.Sequential(c(160, 64, 1), c(64, 96, 3, 1, 0)),
                                   nn.Sequential(c(160, 64, 1), c(64, 64, (7, 1)), c(64, 64, (1, 7)), c(64, 96, 3, 1, 0))),
                         _Branches(c(192, 192, 3, 2, 0), nn.MaxPool2d(3, 2)))
    red_a = _Branches(c(384, 384, 3, 2, 0), nn.Sequential(c(384, 192, 1), c(192, 224), c(224, 256, 3, 2, 0)),
                      nn.MaxPool2d(3, 2))
    red_b = _Branches(nn.Sequential(c(1024, 192, 1), c(192, 192, 3, 2, 0)),
                      nn.Sequential(c(1024, 256, 1), c(256, 256, (1, 7)), c(256, 320, (7, 1)), c(320, 320, 3, 2, 0)),
                      nn.MaxPool2d(3, 2))
    return nn.Sequential(stem, *[a() for _ in range(4)], red_a, *[b() for _ in range(7)], red_b,
                         *[cc() for _ in range(3)], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1536, 1000))


class _EDSR(nn.Module):
    def __init__(self, blocks: int = 16, feats: int = 64, scale: int = 2) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, feats, 3, padding=1)
        self.body = nn.ModuleList([nn.Sequential(nn.Conv2d(feats, feats, 3, padding=1), nn.ReLU(),
                                                 nn.Conv2d(feats, feats, 3, padding=1)) for _ in range(blocks)])
        self.up = nn.Sequential(nn.Conv2d(feats, feats * scale * scale, 3, padding=1), nn.PixelShuffle(scale),
                                nn.Conv2d(feats, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        y = h
        for blk in self.body:
            y = y + blk(y)
        return self.up(y + h)


class _YOLO(nn.Module):
    """CSP-style detector stand-in: conv backbone with C2f-like blocks, an FPN neck and 3 heads."""

    def __init__(self, w: float, d: float, mc: int) -> None:
        super().__init__()
        ch = [min(mc, int(c * w)) for c in (64, 128, 256, 512, 1024)]
        rep = [max(1, round(n * d)) for n in (3, 6, 6, 3)]
        self.stem = _cbr(3, ch[0], 3, 2, act=nn.SiLU)
        self.stages = nn.ModuleList()
        for i in range(4):
            blocks = [_cbr(ch[i], ch[i + 1], 3, 2, act=nn.SiLU)]
            for _ in range(rep[i]):
                blocks.append(_MBConv(ch[i + 1], ch[i + 1], 0.5, 3, 1, False, nn.SiLU, fused=True))
            self.stages.append(nn.Sequential(*blocks))
        self.heads = nn.ModuleList([nn.Sequential(_cbr(ch[i], ch[i], 3, act=nn.SiLU), _cbr(ch[i], ch[i], 3, act=nn.SiLU),
                                                  nn.Conv2d(ch[i], 84, 1)) for i in (2, 3, 4)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        y = self.stem(x)
        for st in self.stages:
            y = st(y)
            feats.append(y)
        return [h(f) for h, f in zip(self.heads, feats[1:])]


class _DETR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = resnet([3, 4, 6, 3])
        self.proj = nn.Conv2d(2048, 256, 1)
        self.tr = nn.Transformer(256, 8, 6, 6, 2048, batch_first=True)
        self.query = nn.Parameter(torch.zeros(1, 100, 256))
        self.mask_head = nn.Sequential(_cbr(256 + 8, 128), _cbr(128, 64), nn.Conv2d(64, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.proj(self.trunk(x))
        t = f.flatten(2).transpose(1, 2)
        q = self.tr(t, self.query.expand(x.shape[0], -1, -1))
        return q.sum() + self.mask_head(torch.cat([f, f[:, :8]], 1)).mean()


def _hf(kind: str, size: int, **kw: Any) -> Callable[[], Built]:
    def build() -> Built:
        import transformers as tr
        cfg_cls, model_cls = {"resnet": (tr.ResNetConfig, tr.ResNetModel), "convnext": (tr.ConvNextConfig, tr.ConvNextModel),
                              "beit": (tr.BeitConfig, tr.BeitModel), "regnet": (tr.RegNetConfig, tr.RegNetModel),
                              "vit": (tr.ViTConfig, tr.ViTModel)}[kind]
        return model_cls(cfg_cls(**kw)).eval(), _img(size)
    return build


def _clip_text() -> Built:
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12)).eval(), (torch.zeros(1, 77, dtype=torch.long),)


class _UNetCall(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=ctx).sample


def _sd_unet() -> Built:
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    return _UNetCall(unet.eval()), (torch.randn(1, 4, 64, 64), torch.tensor([10]), torch.randn(1, 77, 768))


class _VAEDecode(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


def _sd_vae() -> Built:
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return _VAEDecode(vae.eval()), (torch.randn(1, 4, 64, 64),)


def _m(fn: Callable[[], nn.Module], size: int) -> Callable[[], Built]:
    return lambda: (fn().eval(), _img(size))


def _mnv3_large(minimal: bool, size: int, extra: bool = False) -> nn.Module:
    act = nn.ReLU if minimal else nn.Hardswish
    k5 = 3 if minimal else 5
    se = not minimal
    stages = [(1.0, 3, 1, 16, 1, False), (4.0, 3, 2, 24, 1, False), (3.0, 3, 1, 24, 1, False),
              (3.0, k5, 2, 40, 3, se), (6.0, 3, 2, 80, 1, False), (2.5, 3, 1, 80, 1, False), (2.3, 3, 1, 80, 2, False),
              (6.0, 3, 1, 112, 2, se), (6.0, k5, 2, 160, 3, se)]
    return mbconv_net(16, stages, 960, act=act)


# name -> (builder, input description). Names match the `arch` key fit.py assigns to CSV rows.
ARCHS: dict[str, tuple[Callable[[], Built], str]] = {
    "resnet101@224": (_hf("resnet", 224, depths=[3, 4, 23, 3], layer_type="bottleneck",
                          hidden_sizes=[256, 512, 1024, 2048]), "transformers ResNetConfig depths 3-4-23-3"),
    "convnext-tiny@224": (_hf("convnext", 224), "transformers ConvNextConfig defaults (= tiny)"),
    "beit-base@224": (_hf("beit", 224), "transformers BeitConfig defaults (= base/16)"),
    "regnetx-3.2gf@224": (_hf("regnet", 224, layer_type="x", depths=[2, 6, 15, 2], hidden_sizes=[96, 192, 432, 1008],
                              groups_width=48, embedding_size=32), "transformers RegNetConfig X-3.2GF"),
    "vit-l14@224": (_hf("vit", 224, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, patch_size=14), "transformers ViTConfig L/14"),
    "clip-text-base": (_clip_text, "transformers CLIPTextConfig 12x768, 77 tokens"),
    "sd15-unet@64": (_sd_unet, "diffusers UNet2DConditionModel SD1.5 config, 64x64 latent, batch 1"),
    "sd15-vae-decoder@64": (_sd_vae, "diffusers AutoencoderKL SD config, decode 64x64 latent"),
    "deeplabv3-resnet101@520": (_m(_DeepLabV3, 520), "dilated ResNet-101 (OS8) + ASPP, 520x520 assumed"),
    "detr-resnet50-seg@448": (_m(_DETR, 448), "ResNet-50 + 6/6 transformer, 100 queries + small mask head"),
    "efficientnetv2-s@384": (_m(lambda: mbconv_net(24, [(1, 3, 1, 24, 2, False), (4, 3, 2, 48, 4, False),
                                                        (4, 3, 2, 64, 4, False), (4, 3, 2, 128, 6, True),
                                                        (6, 3, 1, 160, 9, True), (6, 3, 2, 256, 15, True)],
                                                   1280, act=nn.SiLU, fused_stages=3), 384), "few-line EfficientNetV2-S"),
    "mnasnet-0.5@224": (_m(lambda: mbconv_net(16, [(1, 3, 1, 8, 1, False), (3, 3, 2, 16, 3, False),
                                                   (3, 5, 2, 24, 3, False), (6, 5, 2, 40, 3, False),
                                                   (6, 3, 1, 48, 2, False), (6, 5, 2, 96, 4, False),
                                                   (6, 3, 1, 160, 1, False)], 1280, act=nn.ReLU), 224),
                        "few-line MNASNet-B1 x0.5"),
    "mobilenetv2-1.4@224": (_m(lambda: mbconv_net(48, [(1, 3, 1, 24, 1, False), (6, 3, 2, 32, 2, False),
                                                       (6, 3, 2, 48, 3, False), (6, 3, 2, 88, 4, False),
                                                       (6, 3, 1, 136, 3, False), (6, 3, 2, 224, 3, False),
                                                       (6, 3, 1, 448, 1, False)], 1792), 224), "few-line MobileNetV2 x1.4"),
    "mobilenetv3-small@224": (_m(lambda: mbconv_net(16, [(1, 3, 2, 16, 1, True), (4.5, 3, 2, 24, 1, False),
                                                         (3.67, 3, 1, 24, 1, False), (4, 5, 2, 40, 3, True),
                                                         (3, 5, 1, 48, 2, True), (6, 5, 2, 96, 3, True)],
                                                    576, act=nn.Hardswish), 224), "few-line MobileNetV3-Small"),
    "mobilenetv3-large-min@224": (_m(lambda: _mnv3_large(True, 224), 224), "few-line MobileNetV3-Large minimalistic"),
    "ssdlite-mnv3-large@320": (_m(lambda: nn.Sequential(_mnv3_large(False, 320)[:-3],
                                                        _cbr(960, 256, 1), _cbr(256, 256, 3, 2, g=256), _cbr(256, 512, 1),
                                                        _cbr(512, 128, 1), _cbr(128, 128, 3, 2, g=128), _cbr(128, 256, 1)),
                                  320), "few-line MobileNetV3-Large + SSDLite extras"),
    "lraspp-mnv3-large@520": (_m(lambda: nn.Sequential(_mnv3_large(False, 520)[:-3], _cbr(960, 128, 1),
                                                       nn.Conv2d(128, 21, 1)), 520), "few-line MobileNetV3-Large + LR-ASPP, 520 assumed"),
    "efficientnet-lite0@224": (_m(lambda: efficientnet_lite(1.0, 1.0), 224), "few-line EfficientNet-Lite0"),
    "efficientnet-lite1@240": (_m(lambda: efficientnet_lite(1.0, 1.1), 240), "few-line EfficientNet-Lite1"),
    "efficientnet-lite2@260": (_m(lambda: efficientnet_lite(1.1, 1.2), 260), "few-line EfficientNet-Lite2"),
    "efficientnet-lite3@280": (_m(lambda: efficientnet_lite(1.2, 1.4), 280), "few-line EfficientNet-Lite3"),
    "squeezenet-1.0@224": (_m(squeezenet, 224), "few-line SqueezeNet 1.0"),
    "inception-v4@299": (_m(inception_v4, 299), "few-line Inception-v4"),
    "edsr-r16f64-x2@224": (_m(_EDSR, 224), "few-line EDSR 16 blocks x 64 feats, x2"),
    "yolo26n@512": (_m(lambda: _YOLO(0.25, 0.5, 256), 512), "CSP-style stand-in, width 0.25 depth 0.5"),
    "yolo26x@512": (_m(lambda: _YOLO(1.5, 1.0, 768), 512), "CSP-style stand-in, width 1.5 depth 1.0"),
    "fastvit-t8@256": (_m(lambda: _Metaformer([48, 96, 192, 384], [2, 2, 4, 2], 3, k=7, dw_down=True), 256), "metaformer stand-in"),
    "fastvit-t12@256": (_m(lambda: _Metaformer([64, 128, 256, 512], [2, 2, 6, 2], 3, k=7, dw_down=True), 256), "metaformer stand-in"),
    "fastvit-sa36@256": (_m(lambda: _Metaformer([64, 128, 256, 512], [6, 6, 18, 6], 4, k=7, attn_last=6, dw_down=True), 256),
                         "metaformer stand-in, attention in last stage"),
    "mobileone-s0@224": (_m(lambda: _Metaformer([48, 128, 256, 1024], [2, 8, 10, 1], 1, dw_down=True), 224), "plain conv stand-in"),
    "mobileone-s2@224": (_m(lambda: _Metaformer([96, 256, 640, 2048], [2, 8, 10, 1], 1, dw_down=True), 224), "plain conv stand-in"),
    "mobileone-s3@224": (_m(lambda: _Metaformer([128, 320, 768, 2048], [2, 8, 10, 1], 1, dw_down=True), 224), "plain conv stand-in"),
    "repvit-m0.9@224": (_m(lambda: _Metaformer([48, 96, 192, 384], [2, 2, 14, 2], 2), 224), "metaformer stand-in"),
    "repvit-m1.0@224": (_m(lambda: _Metaformer([56, 112, 224, 448], [2, 2, 14, 2], 2), 224), "metaformer stand-in"),
    "repvit-m1.1@224": (_m(lambda: _Metaformer([64, 128, 256, 512], [2, 2, 12, 2], 2), 224), "metaformer stand-in"),
    "efficientformerv2-s0@224": (_m(lambda: _Metaformer([32, 48, 96, 176], [2, 2, 6, 4], 4, attn_last=2, attn_stages=2), 224),
                                 "metaformer stand-in, attention in last 2 stages"),
    "efficientformerv2-s1@224": (_m(lambda: _Metaformer([32, 48, 120, 224], [3, 3, 9, 6], 4, attn_last=2, attn_stages=2), 224),
                                 "metaformer stand-in, attention in last 2 stages"),
    "swiftformer-xs@224": (_m(lambda: _Metaformer([48, 56, 112, 220], [3, 3, 6, 4], 4, attn_last=1, attn_stages=2), 224),
                           "metaformer stand-in, one attention block in each of the last 2 stages"),
}


def build_arch(name: str) -> Built:
    """Build calibration architecture ``name`` with random weights on the ``meta`` device."""
    builder, _ = ARCHS[name]
    with torch.device("meta"):
        model, inputs = builder()
    return model, inputs
