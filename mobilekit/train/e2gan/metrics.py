"""Image quality metrics and a fixed, hand-made image feature space.

``image_features`` maps images to a deterministic 76-d vector (colour moments, a coarse
colour layout, colour histograms, gradient and Laplacian statistics). It needs no
downloaded network, so the Fréchet distance computed in it (``frechet_distance``) is
reproducible offline; it is *not* comparable to an Inception FID. The same features drive
k-means data-subset selection and the offline concept descriptors.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from mobilekit.errors import ConfigError

logger = logging.getLogger(__name__)

FEATURE_DIM = 76


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(f"{name} must be [N, 3, H, W], got {tuple(x.shape)}", where=name)


@torch.no_grad()
def image_features(images: torch.Tensor) -> torch.Tensor:
    """Return fixed features [N, 76] of ``images`` [N, 3, H, W] in [-1, 1].

    Features: per-channel mean and std (6), a 4×4 colour layout (48), 4-bin soft
    histograms per channel (12), gradient magnitude mean/std at full and half resolution
    (4), Laplacian energy (1), and gray mean/std/range at half resolution plus saturation
    mean/std (5).
    """
    _check_images(images, "images")
    x = (images.float().clamp(-1, 1) + 1) / 2  # [0, 1]
    n = x.shape[0]
    mean = x.mean(dim=(2, 3))
    std = x.std(dim=(2, 3))
    layout = F.adaptive_avg_pool2d(x, 4).reshape(n, -1)
    centres = torch.tensor([0.125, 0.375, 0.625, 0.875])
    d = (x.unsqueeze(-1) - centres).abs()  # [N,3,H,W,4]
    soft = torch.clamp(1 - d * 4, min=0)
    hist = soft.mean(dim=(2, 3)).reshape(n, -1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).reshape(1, 1, 3, 3) / 4
    ky = kx.transpose(-1, -2)
    grads = []
    for g in (gray, F.avg_pool2d(gray, 2)):
        mag = torch.sqrt(F.conv2d(g, kx, padding=1) ** 2 + F.conv2d(g, ky, padding=1) ** 2 + 1e-12)
        grads += [mag.mean(dim=(1, 2, 3)), mag.std(dim=(1, 2, 3))]
    lap_k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).reshape(1, 1, 3, 3)
    lap = F.conv2d(gray, lap_k, padding=1).pow(2).mean(dim=(1, 2, 3)).sqrt()
    sat = x.max(dim=1).values - x.min(dim=1).values
    pooled = F.avg_pool2d(gray, 2)
    extra = torch.stack([pooled.mean(dim=(1, 2, 3)), pooled.std(dim=(1, 2, 3)),
                         pooled.amax(dim=(1, 2, 3)) - pooled.amin(dim=(1, 2, 3)),
                         sat.mean(dim=(1, 2)), sat.std(dim=(1, 2))], dim=1)
    feats = torch.cat([mean, std, layout, hist, torch.stack(grads, 1), lap.unsqueeze(1), extra], dim=1)
    return feats


def psnr(output: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (computed on the [0, 1] scale)."""
    _check_images(output, "output")
    if output.shape != target.shape:
        raise ConfigError(f"shapes differ: {tuple(output.shape)} vs {tuple(target.shape)}", where="psnr")
    mse = (((output.float() - target.float()) / 2) ** 2).mean().item()
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def l1(output: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error on the [-1, 1] scale."""
    if output.shape != target.shape:
        raise ConfigError(f"shapes differ: {tuple(output.shape)} vs {tuple(target.shape)}", where="l1")
    return float((output.float() - target.float()).abs().mean().item())


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F].

    Features are whitened per dimension by the pooled standard deviation first so that no
    feature group dominates; ``eps`` regularises the covariances (few samples).
    """
    a = feats_a.double().numpy()
    b = feats_b.double().numpy()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ConfigError("frechet_distance needs at least 2 samples per set", where="frechet_distance")
    scale = np.concatenate([a, b]).std(axis=0) + 1e-8
    a, b = a / scale, b / scale
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = np.cov(a, rowvar=False) + eps * np.eye(a.shape[1])
    cb = np.cov(b, rowvar=False) + eps * np.eye(b.shape[1])
    # sqrt(ca) cb sqrt(ca) is symmetric PSD; its eigenvalues' square roots sum to tr sqrt(ca cb).
    wa, va = np.linalg.eigh(ca)
    sqrt_a = (va * np.sqrt(np.clip(wa, 0, None))) @ va.T
    mid = sqrt_a @ cb @ sqrt_a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)).sum()
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_covmean)
    return max(fd, 0.0)
